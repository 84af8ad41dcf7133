"""``RolloutWorker``: a Ray actor owning a generation engine and a client of the simulator pool.

It samples start states from a cohort split, plays whole propose-simulate-refine episodes in batches
(generation batched across the episodes it runs concurrently) and returns them as an Arrow table in
the episode schema. Dashboard metrics: ``sepsis_rl_rollout_decisions_per_s``,
``sepsis_rl_rollout_tokens_per_s``, ``sepsis_rl_rollout_parse_failure_rate``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import ray

from sepsis_rl.cohort.store import read_spec
from sepsis_rl.rollout.episodes import episodes_to_table
from sepsis_rl.rollout.psr import AgentConfig, PSRAgent, play_episodes

EPISODE_ID_STRIDE = 10**9  # episode ids: worker_id * stride + counter, unique across workers
ITERATION_ID_STRIDE = 10**5  # within a worker's range: iteration * stride + index (RL), unique across resumes
EVAL_ID_BASE = 10**15  # held-out evaluation episodes: fixed ids, so every evaluation meets the same simulator noise


def training_episode_offset(iteration: int, n_episodes: int) -> int:
    """First episode id offset (within a worker's range) of an RL iteration's rollouts.

    Ids are a function of (iteration, worker, index), never of a counter inside the worker: a restarted
    worker, or a resumed run, must not replay the simulator noise of earlier episodes.
    """
    if n_episodes > ITERATION_ID_STRIDE or (iteration + 1) * ITERATION_ID_STRIDE > EPISODE_ID_STRIDE:
        raise ValueError(f"episode id space exhausted: iteration {iteration} with {n_episodes} episodes per worker")
    return iteration * ITERATION_ID_STRIDE


@dataclass(frozen=True)
class WorkerConfig:
    model_path: str
    cohort_dir: str
    split: str = "train"
    engine: str = "transformers"  # or "vllm", or "auto" (vLLM where installed: rollout/engine_choice.py)
    agent: AgentConfig = field(default_factory=AgentConfig)
    batch_episodes: int = 8  # episodes played concurrently (one generate call per decision for all)
    threads: int = 1
    engine_options: dict = field(default_factory=dict)  # engine constructor options (vLLM: dtype, weight_transfer, ...)


def make_engine(kind: str, model_path: str, **options: Any) -> Any:
    """The generation engine ``kind`` on ``model_path``; ``options`` go to its constructor
    (e.g. ``weight_transfer="nccl"`` for a GPU vLLM engine that receives NCCL weight broadcasts)."""
    from sepsis_rl.rollout.engine_choice import resolve_engine

    kind = resolve_engine(kind) if kind == "auto" else kind
    if kind == "transformers":
        from sepsis_rl.rollout.transformers_engine import TransformersEngine

        return TransformersEngine(model_path, **options)
    if kind == "vllm":
        from sepsis_rl.rollout.vllm_engine import VLLMEngine  # vLLM itself is imported inside, with a clear error

        return VLLMEngine(model_path, **options)
    raise ValueError(f"unknown engine {kind!r} (choose auto, transformers or vllm)")


class RolloutWorkerImpl:
    def __init__(self, worker_id: int, config: WorkerConfig, simulator: Any):
        self.worker_id, self.config, self.sim = worker_id, config, simulator
        # A failure here would kill the actor and reach the driver as an opaque ActorDiedError; kept, it is
        # re-raised by every call, so the driver sees the real exception (e.g. an unreadable cohort) in one line.
        self._init_error: Exception | None = None
        try:
            self._setup(config)
        except Exception as e:  # noqa: BLE001 - re-raised on first use
            self._init_error = e

    def _check(self) -> None:
        if self._init_error is not None:
            raise self._init_error

    def _setup(self, config: WorkerConfig) -> None:
        import torch

        torch.set_num_threads(config.threads)
        from sepsis_rl import storage
        from sepsis_rl.rollout.starts import StartStates

        # locations (paths or URIs) become this node's local paths: a URI run folder is downloaded once per node
        config = replace(config, cohort_dir=storage.local_copy(config.cohort_dir), model_path=storage.local_copy(config.model_path))
        self.config = config
        self.spec = read_spec(config.cohort_dir)
        self.starts = StartStates.from_cohort(config.cohort_dir, config.split)
        self.engine = make_engine(config.engine, config.model_path, **config.engine_options)
        self.agent = PSRAgent(self.engine, self.engine.tokenizer, self.spec, config.agent)
        self._next = 0
        self._starts_by_split = {config.split: self.starts}
        self.metrics = _metrics(self.worker_id) if ray.is_initialized() else None

    def ping(self) -> int:
        """Ready check: raises the construction error, if any; returns the worker id."""
        self._check()
        return self.worker_id

    def load_weights(self, state_dict: Mapping[str, Any]) -> None:
        self._check()
        self.engine.load_weights(state_dict)

    def run(self, n_episodes: int, group_size: int = 1, seed: int = 0, start_index: np.ndarray | None = None,
            slot: int | None = None, first_id: int | None = None, part: tuple[int, int] | None = None,
            shared_group_noise: bool = False) -> pa.Table:
        """Play ``n_episodes`` (``group_size`` episodes per start state); returns the episode table.

        The episodes are a function of (``seed``, ``slot``, ``first_id``) only, so any worker holding the same
        weights can replay another's: ``slot`` (default: this worker's id) seeds the start states and ids,
        ``first_id`` is the first id offset within the slot's range (default: a counter of this worker's
        calls), and ``part = (lo, hi)`` plays only episodes lo..hi-1 of the call (``lo`` a multiple of
        ``batch_episodes``, so every batch, and its sampling, is the same as in a whole call).
        ``shared_group_noise``: a group's episodes meet the same simulator noise (``play_episodes``).
        """
        self._check()
        if n_episodes % group_size:
            raise ValueError(f"n_episodes ({n_episodes}) must be a multiple of group_size ({group_size})")
        wid = self.worker_id if slot is None else slot
        rng = np.random.default_rng([seed, wid])
        n_groups = n_episodes // group_size
        picks = self.starts.sample(n_groups, rng) if start_index is None else np.asarray(start_index)
        picks = np.repeat(picks, group_size)
        if first_id is None:
            if part is not None:
                raise ValueError("part needs an explicit first_id (a counter would differ between workers)")
            first_id, self._next = self._next, self._next + n_episodes
        base = wid * EPISODE_ID_STRIDE + first_id
        ids = base + np.arange(n_episodes)
        groups = base + np.repeat(np.arange(n_groups) * group_size, group_size)
        lo_part, hi_part = (0, n_episodes) if part is None else part
        if lo_part % self.config.batch_episodes or not 0 <= lo_part < hi_part <= n_episodes:
            raise ValueError(f"part {part} must start at a multiple of {self.config.batch_episodes} within 0..{n_episodes}")
        records = []
        t0 = time.perf_counter()
        for lo in range(lo_part, hi_part, self.config.batch_episodes):
            sl = slice(lo, min(lo + self.config.batch_episodes, hi_part))
            records += play_episodes(self.agent, self.sim, self.starts.states[picks[sl]], ids[sl], groups[sl],
                                     picks[sl], seed=seed * 7919 + lo, shared_group_noise=shared_group_noise)
        table = episodes_to_table(records)
        self._report(table, time.perf_counter() - t0)
        return table

    def evaluate(self, start_index: np.ndarray, split: str = "val", seed: int = 0, temperature: float | None = None) -> pa.Table:
        """Held-out episodes from fixed start states with fixed episode ids: comparable across iterations."""
        from dataclasses import replace

        from sepsis_rl.rollout.starts import StartStates

        self._check()
        if split not in self._starts_by_split:
            self._starts_by_split[split] = StartStates.from_cohort(self.config.cohort_dir, split)
        starts = self._starts_by_split[split]
        agent = self.agent
        if temperature is not None and temperature != self.config.agent.temperature:
            agent = PSRAgent(self.engine, self.engine.tokenizer, self.spec, replace(self.config.agent, temperature=temperature))
        idx = np.asarray(start_index, dtype=np.int64)
        ids = EVAL_ID_BASE + self.worker_id * EPISODE_ID_STRIDE + np.arange(len(idx))
        records = []
        for lo in range(0, len(idx), self.config.batch_episodes):
            sl = slice(lo, lo + self.config.batch_episodes)
            records += play_episodes(agent, self.sim, starts.states[idx[sl]], ids[sl], ids[sl], idx[sl], seed=seed + lo)
        return episodes_to_table(records)

    WEIGHT_TRANSFER_CALLS = ("init_weight_transfer_engine", "start_weight_update", "update_weights", "finish_weight_update")

    def engine_call(self, method: str, *args: Any) -> None:
        """The vLLM NCCL weight-transfer protocol, driven by the learner (``learner/nccl_sync.py``)."""
        if method not in self.WEIGHT_TRANSFER_CALLS:
            raise ValueError(f"{method!r} is not a weight-transfer call ({', '.join(self.WEIGHT_TRANSFER_CALLS)})")
        self._check()
        getattr(self.engine, method)(*args)

    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        """Teacher-forced log-probs at the sampling temperature (to check them against the learner's)."""
        self._check()
        return self.engine.score_tokens(sequences, self.config.agent.temperature)

    def _report(self, table: pa.Table, seconds: float) -> None:
        if not self.metrics or table.num_rows == 0:
            return
        decisions = int(np.sum(table.column("length").to_numpy()))
        tokens = int(np.sum(table.column("generated_tokens").to_numpy()))
        failures = int(np.sum(table.column("parse_failures").to_numpy()))
        per = 2 if self.config.agent.use_simulator else 1
        self.metrics["decisions"].set(decisions / seconds)
        self.metrics["tokens"].set(tokens / seconds)
        self.metrics["failures"].set(failures / max(per * decisions, 1))


def _metrics(worker_id: int) -> dict[str, Any]:
    from ray.util import metrics

    from sepsis_rl.telemetry import run_tags

    keys = ("run_id", "worker")
    out = {
        "decisions": metrics.Gauge("sepsis_rl_rollout_decisions_per_s", "decisions per second of a rollout worker",
                                   tag_keys=keys),
        "tokens": metrics.Gauge("sepsis_rl_rollout_tokens_per_s", "generated tokens per second of a rollout worker",
                                tag_keys=keys),
        "failures": metrics.Gauge("sepsis_rl_rollout_parse_failure_rate", "share of unparseable agent outputs",
                                  tag_keys=keys),
    }
    for m in out.values():
        m.set_default_tags(run_tags(worker=str(worker_id)))
    return out


RolloutWorker = ray.remote(RolloutWorkerImpl)
