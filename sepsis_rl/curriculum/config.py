"""Pipeline configuration: dataclasses, filled from the YAML presets shipped in ``sepsis_rl/configs``.

One YAML file describes a whole run (cohort, world model, the three stages, rollout and cluster
resources); the presets ``tiny``, ``cpu`` and ``gpu`` differ only in numbers. Unknown or mistyped keys
are errors that name the file and the key path, never silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from sepsis_rl.agent.prompts import PROMPT_STYLES
from sepsis_rl.rollout.dtypes import DTYPES

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
PRESETS = ("tiny", "cpu", "gpu")


class ConfigError(ValueError):
    """A run configuration that cannot be used (message names the file and the key)."""


@dataclass
class CohortStage:
    patients: int = 10000
    seed: int = 0


@dataclass
class WorldModelStage:
    preset: str = "cpu"  # world_model/presets.py: tiny, cpu or gpu


@dataclass
class SFTStage:
    """Stage 1, patient dynamics: (state, action) -> next state as text."""

    samples: int = 256
    heldout_samples: int = 32
    epochs: int = 1
    lr: float = 2e-5
    micro_batch: int = 4
    grad_accum: int = 1


@dataclass
class BCStage:
    """Stage 2, PSR behaviour cloning: whole decisions (proposal around the clinician's action, the world
    model's simulation, a prescription). ``target: simulation`` prescribes the candidate whose simulated
    outcome score is best (what the tool shows the agent; teaches it to use its tool); ``clinician``
    prescribes the logged action whatever the simulation says (imitation, kept for comparison)."""

    traces: int = 128
    target: str = "simulation"
    # the candidates a simulation-target trace proposes around its anchor: the "first" two neighbours the
    # observation lists (the set that did best in truth; psr_traces.alternative_candidates) or "random" ones
    candidates: str = "first"
    epochs: int = 1
    lr: float = 2e-5
    micro_batch: int = 4
    grad_accum: int = 1
    eval_states: int = 48  # held-out states for the action accuracy vs the clinician


@dataclass
class RLStage:
    """Stage 3, world-model RL: GRPO (default) or PPO on PSR episodes played in the simulator pool."""

    algorithm: str = "grpo"
    iterations: int = 6
    groups_per_iteration: int = 2  # start states per iteration
    group_size: int = 4  # episodes per start state (GRPO's G)
    max_steps: int = 3  # decisions per episode at most (the simulated horizon cap)
    # "expected": episodes run to max_steps and pay the expected reward over the world model's
    # death/discharge probabilities (no ending draw: returns lose that variance); "sample": draw endings
    endings: str = "expected"
    lr: float = 1e-5
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    clip_eps: float = 0.2
    loss_agg: str = "token-mean"
    micro_batch: int = 4
    grad_accum: int = 1
    gamma: float = 1.0
    lam: float = 0.95
    eval_states: int = 8  # held-out start states evaluated every eval_every iterations
    eval_every: int = 1
    eval_temperature: float = 0.0  # greedy: the held-out return then moves only when the policy does
    checkpoint_every: int = 2
    keep_checkpoints: int = 2  # the last K checkpoints stay: a corrupt newest one falls back to the previous
    mismatch_samples: int = 4  # segments whose log-probs are compared learner vs engine after each sync
    # GRPO's group comparison: members of a group share the simulator's noise, so their returns differ by
    # their decisions alone; groups whose returns are all equal teach nothing and are dropped, then
    # replaced by freshly played groups up to refill_rounds times (DAPO's dynamic sampling)
    shared_group_noise: bool = True
    dynamic_sampling: bool = True
    refill_rounds: int = 1
    advantage_std: bool = True  # divide by the group's std (GRPO); false: centred returns only (Dr. GRPO)
    kl_samples: int = 32  # segments re-scored after each update for the KL to the previous policy (0: off)


@dataclass
class EvalStage:
    """The last stage: ``sepsis-rl evaluate`` on the run (true values, off-policy estimates, safety, baselines)."""

    enabled: bool = True
    policies: str = ("clinician,random,no_treatment,guideline,wm_planner,wm_planner_k3,wd3qne,cql,bc,agent,"
                     "agent_no_sim,base_llm_wm")
    patients: int = 0  # test patients for the true values of non-LLM policies (0: all)
    llm_patients: int = 50  # test patients for the true values of the final agent (and agent_no_sim)
    stage_patients: int = 0  # ... of the stage checkpoints (base_llm_wm, after_sft, after_bc); 0: llm_patients
    llm_stays: int = 0  # logged test stays for the LLM policies' off-policy estimates; 0: llm_patients
    stage_ope: bool = True  # off-policy estimates of the stage checkpoints too (without: truth only, when there is one)
    bootstrap: int = 200
    gamma: float = 0.99
    baselines: str = "default"  # offline-RL training size: default or tiny
    # engine of the LLM policies' decisions ("" = rollout.engine); vLLM's prefix cache makes CPU decisions
    # ~3x faster (README "Evaluation"), after `bash .ci/vllm_env`
    engine: str = ""
    llm_cpus: float = 2.0  # Ray resources of each LLM policy's evaluation task (see EvalConfig)
    llm_gpus: float = 0.0
    llm_dtype: str = "auto"  # the LLM engine's dtype (auto: bf16 on GPUs and CPUs with native bf16; see EvalConfig)


@dataclass
class RolloutSetup:
    engine: str = "transformers"  # or vllm
    workers: int = 1
    batch_episodes: int = 8
    k: int = 3
    horizon: int = 3
    temperature: float = 1.0
    prompt_style: str = "terse"  # sepsis_rl/agent/prompts.py: terse, guided, compact or verbose (recorded in agent.yaml)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


@dataclass
class ClusterSetup:
    learner_workers: int = 1
    zero_stage: int = 1
    learner_cpus: float = 1.0
    learner_gpus: float = 0.0
    bf16: bool = False
    threads: int = 2
    gradient_checkpointing: bool = False  # trade ~3% learner time for half the activation memory
    learner_placement: str = "PACK"  # the ranks' placement group strategy: PACK, SPREAD or STRICT_SPREAD
    simulator_shards: int = 1
    simulator_cpus: float = 0.25
    # custom Ray resources each simulator shard also requests: {"simulator": 0.01} puts the shards on the nodes
    # started with --resources '{"simulator": N}' (CPU nodes beside GPU learners, say)
    simulator_resources: dict[str, float] = field(default_factory=dict)
    weight_sync: str = "object_store"  # or nccl (GPUs + vLLM)


@dataclass
class PipelineConfig:
    name: str = "cpu"
    base_model: str = "default"  # "default" (SmolLM2 from PyPI), "tiny" (random, tests), a local dir or hub id
    seed: int = 0
    heldout_split: str = "test"
    cohort: CohortStage = field(default_factory=CohortStage)
    world_model: WorldModelStage = field(default_factory=WorldModelStage)
    sft: SFTStage = field(default_factory=SFTStage)
    bc: BCStage = field(default_factory=BCStage)
    rl: RLStage = field(default_factory=RLStage)
    evaluate: EvalStage = field(default_factory=EvalStage)
    rollout: RolloutSetup = field(default_factory=RolloutSetup)
    cluster: ClusterSetup = field(default_factory=ClusterSetup)

    def __post_init__(self) -> None:
        if self.rl.algorithm not in ("grpo", "ppo"):
            raise ConfigError(f"rl.algorithm must be grpo or ppo, got {self.rl.algorithm!r}")
        if self.rl.endings not in ("expected", "sample"):
            raise ConfigError(f"rl.endings must be expected or sample, got {self.rl.endings!r}")
        if self.rollout.engine not in ("transformers", "vllm"):
            raise ConfigError(f"rollout.engine must be transformers or vllm, got {self.rollout.engine!r}")
        if self.evaluate.engine not in ("", "transformers", "vllm"):
            raise ConfigError(f"evaluate.engine must be transformers, vllm or empty (the rollout engine), got {self.evaluate.engine!r}")
        if self.bc.target not in ("simulation", "clinician"):
            raise ConfigError(f"bc.target must be 'simulation' or 'clinician', got {self.bc.target!r}")
        if self.bc.candidates not in ("first", "random"):
            raise ConfigError(f"bc.candidates must be 'first' or 'random', got {self.bc.candidates!r}")
        e = self.evaluate
        if e.llm_patients < 2 or e.bootstrap < 1 or e.patients < 0 or e.stage_patients < 0 or e.llm_stays < 0:
            raise ConfigError("evaluate.llm_patients must be >= 2, evaluate.bootstrap >= 1, evaluate.patients, "
                              "evaluate.stage_patients and evaluate.llm_stays >= 0")
        if e.llm_dtype not in DTYPES:
            raise ConfigError(f"evaluate.llm_dtype must be one of {', '.join(DTYPES)}, got {e.llm_dtype!r}")
        if e.llm_cpus < 0 or e.llm_gpus < 0:
            raise ConfigError(f"evaluate.llm_cpus and evaluate.llm_gpus must be >= 0, got {e.llm_cpus} and {e.llm_gpus}")
        if self.rl.group_size < 2 and self.rl.algorithm == "grpo":
            raise ConfigError("rl.group_size must be >= 2 for GRPO (advantages are relative within a group)")
        check_ranges(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Allowed values per key: (predicate, what it means). A value that fails is an error naming the key,
# so that e.g. ``--set rl.iterations=-1`` is refused instead of running nothing and reporting success.
_POSITIVE_INT = (lambda v: v >= 1, ">= 1")
_NONNEG_INT = (lambda v: v >= 0, ">= 0")
_POSITIVE = (lambda v: v > 0, "> 0")
_NONNEG = (lambda v: v >= 0, ">= 0")
_PROBABILITY = (lambda v: 0 <= v <= 1, "in [0, 1]")
_RANGES: dict[str, tuple[Any, str]] = {
    "cohort.patients": (lambda v: v >= 3, ">= 3 (every split needs a patient)"),
    "world_model.preset": (lambda v: v in ("tiny", "cpu", "gpu"), "one of tiny, cpu, gpu"),
    "heldout_split": (lambda v: v in ("train", "val", "test"), "one of train, val, test"),
    **{f"{stage}.{k}": _POSITIVE_INT for stage in ("sft", "bc") for k in ("epochs", "micro_batch", "grad_accum")},
    **{f"{stage}.lr": _POSITIVE for stage in ("sft", "bc", "rl")},
    "sft.samples": _POSITIVE_INT, "sft.heldout_samples": _NONNEG_INT,
    "bc.traces": _POSITIVE_INT, "bc.eval_states": _POSITIVE_INT,
    **{f"rl.{k}": _POSITIVE_INT for k in ("iterations", "groups_per_iteration", "group_size", "max_steps", "micro_batch",
                                          "grad_accum", "eval_states", "eval_every", "checkpoint_every")},
    **{f"rl.{k}": _NONNEG_INT for k in ("mismatch_samples", "refill_rounds", "kl_samples")},
    "rl.kl_coef": _NONNEG, "rl.eval_temperature": _NONNEG,
    "rl.clip_eps": (lambda v: 0 < v <= 1, "in (0, 1]"), "rl.gamma": _PROBABILITY, "rl.lam": _PROBABILITY,
    "rl.kl_estimator": (lambda v: v in ("k1", "k2", "k3"), "one of k1, k2, k3"),
    "rl.loss_agg": (lambda v: v in ("token-mean", "seq-mean"), "one of token-mean, seq-mean"),
    **{f"rollout.{k}": _POSITIVE_INT for k in ("workers", "batch_episodes", "k", "horizon")},
    "rollout.temperature": _NONNEG,
    "rollout.prompt_style": (lambda v: v in PROMPT_STYLES, f"one of {', '.join(PROMPT_STYLES)}"), "rollout.cpus_per_worker": _NONNEG, "rollout.gpus_per_worker": _NONNEG,
    **{f"cluster.{k}": _POSITIVE_INT for k in ("learner_workers", "threads", "simulator_shards")},
    "cluster.zero_stage": (lambda v: v in (0, 1, 2, 3), "one of 0, 1, 2, 3"),
    "cluster.learner_cpus": _NONNEG, "cluster.learner_gpus": _NONNEG, "cluster.simulator_cpus": _NONNEG,
    "cluster.learner_placement": (lambda v: v in ("PACK", "SPREAD", "STRICT_SPREAD"), "one of PACK, SPREAD, STRICT_SPREAD"),
    "cluster.simulator_resources": (lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and k and isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for k, x in v.items()),
        "a mapping of Ray resource names to amounts > 0"),
    "cluster.weight_sync": (lambda v: v in ("object_store", "nccl"), "one of object_store, nccl"),
}


def check_ranges(cfg: "PipelineConfig") -> None:
    """Raise ConfigError naming the first key whose value is out of its allowed range."""
    for key, (ok, meaning) in _RANGES.items():
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        if not ok(node):
            raise ConfigError(f"{key} must be {meaning}, got {node!r}")


def _build(cls: type, data: Any, where: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where or 'the file'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key {'.'.join(filter(None, [where, unknown[0]]))} "
                          f"(known: {', '.join(sorted(known))})")
    kwargs = {}
    for key, value in data.items():
        path = ".".join(filter(None, [where, key]))
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value, path, source)
        else:
            kwargs[key] = _coerce(typ, value, path, source)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _coerce(typ: Any, value: Any, path: str, source: str) -> Any:
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ in (int, str, bool) and type(value) is not typ:
        raise ConfigError(f"{source}: {path} must be {typ.__name__}, got {value!r}")
    return value


def load_config(name_or_path: str, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """A preset name (tiny, cpu, gpu) or a YAML file path, with optional {"rl.iterations": 2} overrides."""
    path = CONFIG_DIR / f"{name_or_path}.yaml" if name_or_path in PRESETS else Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"no config {name_or_path!r}: not a preset ({', '.join(PRESETS)}) nor a file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    source = str(path) + (f" with --set {', '.join(f'{k}={v}' for k, v in overrides.items())}" if overrides else "")
    return _build(PipelineConfig, data, "", source)


def config_from_dict(data: Any, source: str) -> PipelineConfig:
    """A config from an already parsed mapping (a run folder's saved ``config.yaml``); missing keys take defaults."""
    return _build(PipelineConfig, data or {}, "", source)


def dump_config(config: PipelineConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
