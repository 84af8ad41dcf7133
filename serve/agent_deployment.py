"""The agent deployment: owns a generation engine and answers recommendations in batches.

A decision is the trained agent's own procedure, ``PSRAgent.decide`` (observation rendering, proposal,
the simulate tool rendered by the same code, prescription, strict parsing, fallback, safety rules), run
on every request of a batch at once. The tool call goes to the world-model deployment. Requests are
grouped by what changes the procedure (candidates, horizon, temperature, tool use); a sampled request
with a seed runs alone so its answer does not depend on what it was batched with.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
from ray import serve

from serve.agent_dir import AgentDir, load_agent_dir
from serve.metrics import AgentMetrics
from sepsis_rl.agent.fallback import Fallback
from sepsis_rl.cohort.spec import N_BINS

SimulateFn = Callable[[list[np.ndarray], np.ndarray, int], Any]


@dataclass
class DecisionInput:
    states: np.ndarray  # [T, F] validated, imputed history, oldest first
    last_action: int | None
    candidates: int
    horizon: int
    temperature: float
    simulate: bool
    seed: int | None
    imputed_features: list[str]
    request_no: int = 0  # unique per replica, keeps seeded sampled requests apart

    def group_key(self) -> tuple:
        alone = self.request_no if self.seed is not None and self.temperature > 0 else -1
        return (self.candidates, self.horizon, self.temperature, self.simulate, self.seed if alone >= 0 else None, alone)


class _ToolSimulator:
    """The ``Simulator`` the agent calls during ``decide``: episodes are the batch rows, simulate goes remote."""

    def __init__(self, histories: list[np.ndarray], simulate_fn: SimulateFn):
        self.histories, self.simulate_fn = histories, simulate_fn
        self.result: Any = None

    def simulate(self, episode_ids: np.ndarray, candidates: np.ndarray, horizon: int) -> Any:
        self.result = self.simulate_fn([self.histories[int(i)] for i in episode_ids], candidates, horizon)
        return self.result


def make_engine(kind: str, model_path: str) -> Any:
    if kind == "vllm":
        from sepsis_rl.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, in_process=True, dtype="auto")  # as the evaluation decides (bf16 where native)
    import torch

    from sepsis_rl.rollout.transformers_engine import TransformersEngine

    return TransformersEngine(model_path, device="cuda" if torch.cuda.is_available() else "cpu")


class AgentService:
    """Plain-Python core (no Serve): engine + PSR agents per procedure variant; one batch at a time."""

    def __init__(self, agent_dir: str | AgentDir, engine: str, simulate_fn: SimulateFn):
        self.agent_dir = agent_dir if isinstance(agent_dir, AgentDir) else load_agent_dir(agent_dir)
        self.engine = make_engine(engine, str(self.agent_dir.model_path))
        self.simulate_fn = simulate_fn
        self._agents: dict[tuple, Any] = {}
        self._lock = threading.Lock()  # the engine is not thread-safe

    def psr_agent(self, k: int, horizon: int, temperature: float, simulate: bool) -> Any:
        from sepsis_rl.rollout.psr import AgentConfig, PSRAgent

        key = (k, horizon, temperature, simulate)
        if key not in self._agents:
            s = self.agent_dir.settings
            cfg = replace(AgentConfig(), k=k, horizon=horizon, temperature=temperature, use_simulator=simulate,
                          prompt_style=s.prompt_style, fallback=Fallback(s.fallback))
            self._agents[key] = PSRAgent(self.engine, self.engine.tokenizer, self.agent_dir.spec, cfg)
        return self._agents[key]

    def decide_many(self, items: list[DecisionInput]) -> list[dict[str, Any]]:
        out: list[dict[str, Any] | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            groups[item.group_key()].append(i)
        with self._lock:
            for members in groups.values():
                for i, answer in zip(members, self._decide_group([items[i] for i in members])):
                    out[i] = answer
        return out  # type: ignore[return-value]

    def _decide_group(self, items: list[DecisionInput]) -> list[dict[str, Any]]:
        from sepsis_rl.rollout.episodes import EpisodeRecord

        first = items[0]
        agent = self.psr_agent(first.candidates, first.horizon, first.temperature, first.simulate)
        ids = np.arange(len(items))
        sim = _ToolSimulator([it.states for it in items], self.simulate_fn)
        records = [EpisodeRecord(int(i), 0, 0, first.simulate) for i in ids]
        agent.decide(sim, ids, np.stack([it.states[-1] for it in items]),
                     [it.states[-2] if len(it.states) > 1 else None for it in items],
                     [it.last_action for it in items], [len(it.states) - 1 for it in items], records, first.seed)
        return [self._answer(r.decisions[-1], sim.result, j) for j, r in enumerate(records)]

    def _answer(self, d: dict[str, Any], sim: Any, row: int) -> dict[str, Any]:
        failures = [f"{stage}: {d[f'{stage}_failure']}" for stage in ("proposal", "prescription") if d[f"{stage}_failure"]]
        candidates = []
        for k, a in enumerate(d["candidates"] if sim is not None else []):
            cand = {**self.action(a), "death_risk": float(sim.risk_of_death[row, k]),
                    "uncertainty": float(sim.uncertainty[row, k]),
                    "predicted": {"MeanBP": _last(sim.map[row, k]), "Arterial_lactate": _last(sim.lactate[row, k]),
                                  "SOFA": _last(sim.sofa[row, k])}}
            for field, attr in (("expected_return", "expected_return"), ("discharge_risk", "risk_of_discharge")):
                value = getattr(sim, attr, None)  # present in world models' results since the expected-return tool
                if value is not None:
                    cand[field] = float(np.asarray(value)[row, k])
            cand.pop("fluid_ml_4h"), cand.pop("vaso_mcg_kg_min")
            candidates.append(cand)
        reasoning = "\n".join(t for t in (x.strip() for x in (d["proposal_text"], d["tool_output"], d["prescription_text"])) if t)
        return {
            "action": self.action(d["action"]), "candidates": candidates, "reasoning": reasoning,
            "parse_failure": "; ".join(failures) or None, "fallback_used": bool(failures),
            "guideline_flags": list(d.get("violations", [])),
            "proposal_failure": d["proposal_failure"], "prescription_failure": d["prescription_failure"],
        }

    def action(self, a: int) -> dict[str, Any]:
        f, v = divmod(int(a), N_BINS)
        spec = self.agent_dir.spec
        return {"index": int(a), "fluid_bin": f, "vaso_bin": v, "fluid_ml_4h": float(spec.fluid.representative[f]),
                "vaso_mcg_kg_min": float(spec.vaso.representative[v])}


def _last(path: np.ndarray) -> float | None:
    v = float(np.asarray(path)[-1])
    return None if np.isnan(v) else round(v, 4)


@serve.deployment(
    max_ongoing_requests=64,  # >= the batch size, so a replica can fill a batch while one runs
    max_queued_requests=256,  # beyond this the ingress answers 503 + Retry-After instead of queueing forever
    health_check_period_s=10, health_check_timeout_s=60,
    graceful_shutdown_wait_loop_s=2, graceful_shutdown_timeout_s=60,  # finish in-flight batches on scale-down
    ray_actor_options={"num_cpus": 0.5},
)
class AgentDeployment:
    def __init__(self, agent_dir: str, engine: str, world_model: Any, max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.02, tool_timeout_s: float = 60.0):
        self.world_model = world_model
        self.tool_timeout_s = tool_timeout_s
        self.service = AgentService(agent_dir, engine, self._simulate)
        self.metrics = AgentMetrics(self.service.agent_dir.run_id)
        self.batch_sizes: Counter[int] = Counter()
        self._requests = 0
        self._batch.set_max_batch_size(max_batch_size)
        self._batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def _simulate(self, histories: list[np.ndarray], candidates: np.ndarray, horizon: int) -> Any:
        """Called from the decision thread: a blocking call into the world-model deployment."""
        return self.world_model.simulate.remote(histories, candidates, horizon).result(timeout_s=self.tool_timeout_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def _batch(self, items: list[DecisionInput]) -> list[dict[str, Any]]:
        self.batch_sizes[len(items)] += 1
        self.metrics.observe_batch(len(items))
        answers = await asyncio.to_thread(self.service.decide_many, items)
        for a in answers:
            self.metrics.observe_decision(a.pop("proposal_failure"), a.pop("prescription_failure"))
        return answers

    async def recommend(self, item: DecisionInput) -> dict[str, Any]:
        self._requests += 1
        item.request_no = self._requests
        return await self._batch(item)

    def stats(self) -> dict[str, Any]:
        """Batches by size on this replica (the tests and the benchmark read it; the dashboard has the histogram)."""
        return {"batch_sizes": dict(self.batch_sizes), "requests": self._requests}

    def ready(self) -> bool:
        return self.service.engine is not None

    def check_health(self) -> None:
        if self.service.engine is None:
            raise RuntimeError("generation engine not loaded")
