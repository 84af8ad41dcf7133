"""``sepsis-rl evaluate``: every policy's off-policy estimates beside its true value, safety and the report.

Each policy is evaluated in its own Ray task (a failure is reported with its error; the others finish):
1. its probabilities at every logged test row (LLM policies: the first ``llm_ope_episodes`` stays) ->
   IS / WIS / PDIS / WPDIS / FQE / DR / WDR with bootstrap CIs and ESS (*off-policy estimates*);
2. safety metrics and action tables on the logged states (the policy's choice in the clinicians' situations);
3. for cohorts with a ground truth: full stays from the test patients' admission in the true simulator, with
   common random numbers (*true* value), and safety on its own trajectories;
4. with a world model: the policy played in the learned world model (*in-model* value, labelled as such).
The driver pairs every true value with the clinician's on the same patients and writes the report.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sepsis_rl.eval.llm_policy import LLMProbConfig
from sepsis_rl.eval.registry import BASELINE_NAMES, DEFAULT_POLICIES, LLM_POLICIES, STAGE_POLICIES, Sources
from sepsis_rl.rollout.dtypes import DTYPES as LLM_DTYPES

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    policies: tuple[str, ...] = DEFAULT_POLICIES
    split: str = "test"
    patients: int | None = None  # test patients for true values of non-LLM policies (None: all)
    llm_patients: int = 50  # test patients for true values of LLM policies (decisions are slow on CPU)
    llm_ope_episodes: int = 50  # logged test stays on which LLM policies give probabilities
    # true-value patients of the curriculum's stage checkpoints (base_llm, base_llm_wm, after_sft, after_bc):
    # the first ``stage_patients`` of the agent's panel, so every stage is paired with the clinician on the
    # same patients while the final agent gets the larger panel (None: llm_patients)
    stage_patients: int | None = None
    # off-policy estimates of the stage checkpoints too; without them (the cpu preset) a cohort with a ground
    # truth compares the stages in truth only: on a few logged stays their ESS is ~1 and each costs ~100 LLM
    # decisions. A cohort without a truth always gets them (they are then all there is).
    stage_ope: bool = True
    repeats: int = 1
    gamma: float = 0.99
    n_boot: int = 200
    seed: int = 0
    baselines: str = "default"  # baseline training size: "default" or "tiny" (tests)
    llm_probs: LLMProbConfig = field(default_factory=LLMProbConfig)
    engine: str = "transformers"
    behaviour: str = "logged"  # "logged" propensities, or "estimate" them (imported cohorts)
    fqe: bool = True
    # LLM policies played in the world model too: a third pass of slow decisions, off unless asked for
    llm_in_model: bool = False
    window: int = 4
    # Ray resources of each LLM policy's task: a CPU engine takes every core it is given, so they run one
    # at a time on a 2-core machine; on a GPU cluster each takes a GPU (the gpu preset's llm_gpus: 1)
    llm_cpus: float = 2.0
    llm_gpus: float = 0.0
    # the LLM engine's dtype: "auto" is bf16 on GPUs and on CPUs with native bf16 (the cpu preset's agent
    # decides the same in bf16 as in fp32, 1.7x faster: README "Agent and rollouts"), else fp32
    llm_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.n_boot < 1 or not 0 < self.gamma <= 1 or self.llm_patients < 1:
            raise ValueError("repeats, n_boot and llm_patients must be >= 1 and gamma in (0, 1]")
        if self.stage_patients is not None and self.stage_patients < 1 or self.llm_ope_episodes < 1:
            raise ValueError("stage_patients and llm_ope_episodes must be >= 1")
        if self.llm_cpus < 0 or self.llm_gpus < 0:
            raise ValueError(f"llm_cpus and llm_gpus must be >= 0, got {self.llm_cpus} and {self.llm_gpus}")
        if self.llm_dtype not in LLM_DTYPES:
            raise ValueError(f"llm_dtype must be one of {', '.join(LLM_DTYPES)}, got {self.llm_dtype!r}")
        if self.behaviour not in ("logged", "estimate"):
            raise ValueError(f"behaviour must be 'logged' or 'estimate', got {self.behaviour!r}")

    def true_patients(self, name: str) -> int | None:
        """How many test patients policy ``name`` plays in the ground truth (None: all)."""
        if name in STAGE_POLICIES:
            return self.stage_patients or self.llm_patients
        return self.llm_patients if name in LLM_POLICIES else self.patients


# ------------------------------------------------------------------------------------------- inputs
def load_logged(sources: Sources, cfg: EvalConfig, split: str, max_episodes: int | None = None) -> Any:
    """A split's logged data, with behaviour propensities (logged, or estimated on train/val if asked)."""
    from sepsis_rl.cohort.validation import CohortInputError
    from sepsis_rl.eval.logged import LoggedData

    data = LoggedData.from_cohort(sources.cohort, split, max_episodes)
    if data.behaviour_prob is None:
        if cfg.behaviour != "estimate":
            raise CohortInputError(f"{sources.cohort}: the cohort has no behaviour_prob column (logged propensities); "
                                   "pass --behaviour estimate to fit an estimated behaviour policy for off-policy estimates")
        policy, _ = _behaviour_estimate(sources, cfg)
        data.behaviour_prob = _prob_of_logged(policy, data, cfg.window)
    return data


def _behaviour_estimate(sources: Sources, cfg: EvalConfig) -> tuple[Any, dict[str, Any]]:
    from sepsis_rl.eval.baselines.behaviour_estimate import estimate_behaviour
    from sepsis_rl.eval.logged import LoggedData

    train, val = LoggedData.from_cohort(sources.cohort, "train"), LoggedData.from_cohort(sources.cohort, "val")
    return estimate_behaviour(train, val, cfg.baselines)


def _prob_of_logged(policy: Any, data: Any, window: int) -> np.ndarray:
    probs = policy_probs(policy, data, window)
    return probs[np.arange(len(data)), data.actions]


def policy_probs(policy: Any, data: Any, window: int, batch: int = 2048) -> np.ndarray:
    """[N, 25] the policy's probabilities at every logged row (stays presented in order, per-stay state kept)."""
    from sepsis_rl.eval.policy import check_probs

    out = np.zeros((len(data), 25))
    policy.begin(np.unique(data.episode_ids))
    # a stateful policy sees each stay's decisions in order, one step per call; the others get full batches
    # (an LLM policy's logged stays would otherwise end in long tails of one-decision calls)
    groups = [np.flatnonzero(data.steps == s) for s in np.unique(data.steps)] if policy.stateful else [np.arange(len(data))]
    for rows in groups:
        for lo in range(0, len(rows), batch):
            r = rows[lo:lo + batch]
            out[r] = check_probs(policy.action_probs(data.decisions(r, window)), len(r), policy.name)
    return out


def build_policy(name: str, sources: Sources, cfg: EvalConfig, truth: Any | None, engines: Any | None = None) -> Any:
    """Construct (and for offline RL, train on train / select on val) one policy; LLM policies take
    their engine from ``engines`` (an ``EngineSlot``) when given."""
    from sepsis_rl.cohort.store import read_spec
    from sepsis_rl.eval import policies as P

    spec = read_spec(sources.cohort)
    names = tuple(spec.feature_names)
    if name == "clinician":
        if truth is not None:
            return P.SyntheticClinician(names, truth.cohort_seed)
        policy, _ = _behaviour_estimate(sources, cfg)
        policy.name = "clinician"
        return policy
    if name == "random":
        return P.RandomPolicy()
    if name == "no_treatment":
        return P.no_treatment()
    if name in BASELINE_NAMES:
        from sepsis_rl.eval.baselines import build_baseline
        from sepsis_rl.eval.logged import LoggedData

        train, val = LoggedData.from_cohort(sources.cohort, "train"), load_logged(sources, cfg, "val")
        return build_baseline(name, train, val, cfg.baselines)
    if name.startswith("wm_planner") or name.startswith("oracle"):
        from sepsis_rl.eval.planners import TrueSimulatorPlanner, WorldModelPlanner

        mode = "clinician3" if name.endswith("_k3") else "guideline3" if name.endswith("_gl3") else "all"
        proposer = build_policy({"clinician3": "clinician", "guideline3": "guideline"}[mode], sources, cfg, truth) \
            if mode != "all" else None
        if name.startswith("oracle"):
            return TrueSimulatorPlanner(truth.simulator, mode, proposer, seed=cfg.seed, name=name)
        from world_model.checkpoint import load_world_model

        return WorldModelPlanner(load_world_model(sources.world_model), mode, 1, proposer, name=name)
    if name in LLM_POLICIES:
        return _llm(name, sources, cfg, spec, engines)
    raise ValueError(f"unknown policy {name!r}")


def _llm(name: str, sources: Sources, cfg: EvalConfig, spec: Any, engines: Any | None = None) -> Any:
    from sepsis_rl.eval.llm_policy import LLMPolicy
    from world_model.checkpoint import load_world_model

    model = llm_model_path(name, sources)
    use_sim = name not in ("agent_no_sim", "base_llm")
    wm = load_world_model(sources.world_model) if use_sim else None
    a = sources.agent_cfg
    # agent.yaml written before prompt styles and fallbacks were recorded: the verbose style, repeat-last
    return LLMPolicy(name, str(model), spec, wm, int(a.get("k", 3)), int(a.get("horizon", 3)), use_sim, cfg.engine,
                     cfg.llm_probs, cfg.seed, prompt_style=str(a.get("prompt_style", "verbose")),
                     fallback=str(a.get("fallback", "repeat_last")), dtype=cfg.llm_dtype, engines=engines)


def llm_model_path(name: str, sources: Sources) -> str:
    """The checkpoint LLM policy ``name`` decides with (the base model for base_llm*)."""
    from sepsis_rl.models import resolve_base_model

    model = {"agent": sources.agent_model, "agent_no_sim": sources.agent_model, "after_sft": sources.sft_model,
             "after_bc": sources.bc_model}.get(name) or resolve_base_model(sources.base_model)
    return str(model)


# ------------------------------------------------------------------------------------- one policy
def evaluate_one(name: str, sources: Sources, cfg: EvalConfig, engines: Any | None = None) -> dict[str, Any]:
    """Everything about one policy (in a Ray task, or an ``LLMEvaluator`` actor that passes its
    ``EngineSlot`` as ``engines``); raises on failure."""
    from sepsis_rl.eval.offpolicy import OPEConfig, off_policy_estimates
    from sepsis_rl.eval.safety import action_table, dose_by_state, safety_metrics

    t0 = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # a Ray worker's log
    truth = _truth_or_none(sources.cohort)
    policy = build_policy(name, sources, cfg, truth, engines)
    is_llm = name in LLM_POLICIES
    data = load_logged(sources, cfg, cfg.split, cfg.llm_ope_episodes if is_llm else None)
    names = data.feature_names
    out: dict[str, Any] = {"status": "ok", "error": None, "n_decisions": 0, "ope": {}, "safety": {}}
    if logged_estimates_wanted(name, policy, cfg, truth is not None):
        probs = policy_probs(policy, data, cfg.window)
        est = off_policy_estimates(data, probs, OPEConfig(gamma=cfg.gamma, n_boot=cfg.n_boot, seed=cfg.seed,
                                                          use_fqe=cfg.fqe))
        out.update({
            "n_decisions": int(len(data)), "n_ope_episodes": int(len(np.unique(data.episode_ids))),
            "ope": {k: _estimate_dict(v) for k, v in est.items()},
            "safety": _rates(safety_metrics(data.states, names, data.last_actions(), probs, mode="expected")),
            "action_table": action_table(probs), "dose_by_state": dose_by_state(data.states, names, probs),
        })
        if sources.world_model is not None and (cfg.llm_in_model or not is_llm):
            out["ope"]["wm"] = _in_model(policy, sources, cfg, data, is_llm)
    if truth is not None:
        play = policy.with_epsilon(0.0) if hasattr(policy, "with_epsilon") else policy
        traj = _true_rollouts(play, sources, cfg, cfg.true_patients(name))
        out["truth_arrays"] = {"patients": traj.patient_ids.tolist(), "returns": traj.returns.tolist(),
                               "survived": traj.survived.astype(int).tolist()}
        out["safety_true"] = _rates(safety_metrics(traj.row_state, names, traj.row_prev_action, traj.row_action, mode="argmax"))
        out["action_table_true"] = action_table(traj.row_action)
    if hasattr(policy, "stats"):
        out["llm"] = policy.stats()
    if hasattr(policy, "info"):
        out["info"] = _jsonable(policy.info)
    out["seconds"] = time.perf_counter() - t0
    return out


def logged_estimates_wanted(name: str, policy: Any, cfg: EvalConfig, has_truth: bool) -> bool:
    """Whether ``name`` gets off-policy estimates from the logged stays: not oracles (they read hidden
    states), nor stage checkpoints when ``cfg.stage_ope`` is off and the truth can compare them instead."""
    if getattr(policy, "truth_only", False):
        return False
    return cfg.stage_ope or name not in STAGE_POLICIES or not has_truth


def _truth_or_none(cohort: str) -> Any | None:
    from sepsis_rl.cohort.synth import GroundTruth

    try:
        return GroundTruth.load(cohort)
    except ValueError:
        return None


def _true_rollouts(policy: Any, sources: Sources, cfg: EvalConfig, patients: int | None) -> Any:
    from sepsis_rl.cohort.synth import true_policy_values

    seed = None if cfg.seed == 0 else cfg.seed
    return true_policy_values(sources.cohort, {policy.name: policy}, cfg.split, cfg.repeats, seed, cfg.gamma,
                              patients, cfg.window)[policy.name]


def _in_model(policy: Any, sources: Sources, cfg: EvalConfig, data: Any, is_llm: bool) -> dict[str, Any]:
    from sepsis_rl.eval.in_model import in_model_value
    from sepsis_rl.eval.ope import mean_estimate
    from world_model.checkpoint import load_world_model

    first = data.episode_starts()
    n = cfg.llm_patients if is_llm else (cfg.patients or len(first))
    first = first[:n]
    values = in_model_value(policy, load_world_model(sources.world_model), data.states[first], data.episode_ids[first],
                            cfg.gamma, seed=cfg.seed)
    return _estimate_dict(mean_estimate(values, cfg.n_boot, cfg.seed))


def _estimate_dict(e: Any) -> dict[str, Any]:
    d = e.to_dict() if hasattr(e, "to_dict") else asdict(e)
    return {"value": d.get("value"), "ci": list(d.get("ci") or [None, None]), "ess": d.get("ess")}


def _rates(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s.get(k) for k in ("g1", "g2", "underdosing", "overdosing")} | {"n_at_risk": s.get("n_at_risk", {})}


def _jsonable(x: Any) -> Any:
    import json

    return json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def failed(name: str, error: BaseException) -> dict[str, Any]:
    msg = f"{type(error).__name__}: {error}".splitlines()[0][:500]
    log.error("policy %s failed: %s\n%s", name, msg, "".join(traceback.format_exception(error))[-2000:])
    return {"status": "failed", "error": msg, "ope": {}, "true": None, "safety": {}, "n_decisions": 0}
