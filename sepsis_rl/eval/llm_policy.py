"""LLM policies (the agent, its ablations, the base model) behind the one Policy contract.

Each decision is the agent's real decision procedure (``PSRAgent.decide``: observation, proposal, the
*world model's* simulation as tool output, prescription), never the ground truth: in truth rollouts the
patient lives in the true simulator while the agent only ever consults its learned world model.

Action probabilities (needed by importance weights) are not available in closed form for a sampled,
parsed, multi-call decision; two documented estimates:
* ``epsilon`` (default): the greedy decision (temperature 0) softened, (1 - eps) one-hot + eps / 25;
* ``sampled``: the frequency of each action over N decisions sampled at the agent's temperature,
  softened the same way (N = ``samples``).
Ground-truth rollouts play the decision itself (``epsilon = 0`` there, so truth is the agent's behaviour).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from sepsis_rl.cohort.spec import N_ACTIONS, CohortSpec
from sepsis_rl.eval.policy import DecisionBatch, Policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMProbConfig:
    mode: str = "epsilon"  # or "sampled"
    epsilon: float = 0.05
    samples: int = 4
    temperature: float = 1.0  # for "sampled"

    def __post_init__(self) -> None:
        if self.mode not in ("epsilon", "sampled"):
            raise ValueError(f"LLM probability mode must be 'epsilon' or 'sampled', got {self.mode!r}")
        if not 0.0 <= self.epsilon <= 1.0 or self.samples < 1:
            raise ValueError("epsilon must be in [0, 1] and samples >= 1")


class LLMPolicy(Policy):
    """A PSR agent on a generation engine, consulting a world model (or nothing) as its tool."""

    def __init__(self, name: str, model_path: str, spec: CohortSpec, world_model: Any | None, k: int = 3,
                 horizon: int = 3, use_simulator: bool = True, engine: str = "transformers",
                 probs: LLMProbConfig = LLMProbConfig(), seed: int = 0, threads: int = 1, prompt_style: str = "compact",
                 fallback: str = "best_candidate", dtype: str = "auto", engines: Any | None = None):
        import torch

        from sepsis_rl.agent.fallback import Fallback
        from sepsis_rl.rollout.dtypes import engine_dtype_options
        from sepsis_rl.rollout.engine_choice import resolve_engine
        from sepsis_rl.rollout.psr import AgentConfig, PSRAgent
        from sepsis_rl.rollout.worker import make_engine
        from world_model.simulation import SimulationConfig, WorldModelSimulator

        torch.set_num_threads(threads)
        if use_simulator and world_model is None:
            raise ValueError(f"policy {name!r} consults a world model but none was given")
        self.name, self.cfg, self.seed = name, probs, seed
        self.deterministic = probs.mode == "epsilon" and probs.epsilon == 0
        temperature = 0.0 if probs.mode == "epsilon" else probs.temperature
        engine = resolve_engine(engine)
        options = engine_dtype_options(engine, dtype)
        # an evaluation actor's EngineSlot re-weights its running engine; alone, the policy builds its own
        self.engine = engines.get(engine, model_path, **options) if engines is not None else make_engine(engine, model_path, **options)
        self.agent = PSRAgent(self.engine, self.engine.tokenizer, spec,
                              AgentConfig(k=k, horizon=horizon, use_simulator=use_simulator, temperature=temperature,
                                          fallback=Fallback(fallback), prompt_style=prompt_style))
        self.sim = WorldModelSimulator(world_model, SimulationConfig(stochastic=False, max_steps=10**6)) if world_model else None
        # one tally shared with every ``with_epsilon`` copy: truth rollouts count with the logged-stay pass
        self.tally = {"decisions": 0, "parse_failures": 0, "fallbacks": 0}

    def with_epsilon(self, epsilon: float) -> "LLMPolicy":
        """The same loaded agent with another softening (truth rollouts use 0)."""
        other = object.__new__(LLMPolicy)
        other.__dict__.update(self.__dict__)
        other.cfg = replace(self.cfg, epsilon=epsilon)
        other.deterministic = other.cfg.mode == "epsilon" and epsilon == 0
        return other

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        from sepsis_rl.rollout.episodes import EpisodeRecord

        n = len(batch)
        ids = np.asarray(batch.episode_ids, dtype=np.int64)
        keys = np.arange(n, dtype=np.int64)  # the tool's episode keys: a batch of logged rows may hold a stay twice
        sim = self.sim if self.sim is not None else _NoTool()
        sim.reset(keys, batch.history, batch.steps)
        prev = [batch.history[i, -2] if batch.lengths[i] >= 2 else None for i in range(n)]
        last = [int(a) if a >= 0 else None for a in batch.last_action]
        counts = np.zeros((n, N_ACTIONS))
        t0 = time.perf_counter()
        rounds = 1 if self.cfg.mode == "epsilon" else self.cfg.samples
        for r in range(rounds):
            records = [EpisodeRecord(int(e), int(e), 0, self.agent.cfg.use_simulator) for e in ids]
            seed = self.seed + 7919 * int(batch.steps.max(initial=0)) + 104729 * r
            acts = self.agent.decide(sim, keys, batch.current, prev, last, batch.steps.tolist(), records, seed)
            counts[np.arange(n), acts] += 1
            self._count(records)
        sim.release(keys)
        dt = time.perf_counter() - t0
        # progress of a long LLM evaluation: the task's log (Ray dashboard, Jobs/Tasks -> logs)
        log.info("%s: %d decisions (steps up to %d) in %.1f s (%.2f decisions/s; %d so far)", self.name, n * rounds,
                 int(batch.steps.max(initial=0)), dt, n * rounds / max(dt, 1e-9), self.tally["decisions"])
        probs = counts / rounds
        eps = self.cfg.epsilon
        return (1 - eps) * probs + eps / N_ACTIONS

    def _count(self, records: list[Any]) -> None:
        t = self.tally
        for rec in records:
            d = rec.decisions[-1]
            t["decisions"] += 1
            t["parse_failures"] += int(bool(d["prescription_failure"])) + int(bool(d["proposal_failure"]))
            t["fallbacks"] += int(bool(d["prescription_failure"]) or bool(d["proposal_failure"]))

    def stats(self) -> dict[str, float | int]:
        """Over every decision this policy made (logged-stay probabilities and truth rollouts alike)."""
        per = 2 if self.agent.cfg.use_simulator else 1
        t = self.tally
        return {"decisions": t["decisions"], "parse_failure_rate": t["parse_failures"] / max(per * t["decisions"], 1),
                "fallback_rate": t["fallbacks"] / max(t["decisions"], 1)}


class _NoTool:
    """The agent without a simulator never simulates; reset/release are no-ops."""

    def reset(self, *args: Any) -> None: ...
    def release(self, *args: Any) -> None: ...
    def simulate(self, *args: Any) -> Any:
        raise RuntimeError("an agent without the simulator tool tried to simulate")
