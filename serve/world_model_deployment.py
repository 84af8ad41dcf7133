"""The world-model deployment: the agent's ``simulate`` tool and the what-if endpoint, batched.

Each call forks throw-away simulated patients from the given histories (a fresh ``WorldModelSimulator``
per batch: no state is shared between requests, so replicas are interchangeable and a restarted one
needs no replay). The roll-out is the simulator's own ``simulate`` (mean path, the same code the
rollout workers' shards run), so the served agent reads tool output computed exactly as in training.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from serve.agent_dir import load_agent_dir


@dataclass
class SimulationCall:
    histories: list[np.ndarray]  # B histories [T_b, F], real units, oldest first
    candidates: np.ndarray  # [B, K] joint actions
    horizon: int


def fit_window(history: np.ndarray, window: int) -> np.ndarray:
    """Last ``window`` states, left-padded with the first one (as ``WorldModelSimulator.reset`` does)."""
    h = np.asarray(history, dtype=np.float64)
    if len(h) >= window:
        return h[-window:]
    return np.concatenate([np.repeat(h[:1], window - len(h), axis=0), h], axis=0)


class WorldModelService:
    """Plain-Python core (no Serve): loads the world model once, rolls candidates forward in batches."""

    def __init__(self, agent_dir: str):
        from world_model.checkpoint import load_world_model
        from world_model.simulation import SimulationConfig

        self.agent = load_agent_dir(agent_dir)
        self.model = load_world_model(self.agent.world_model_path)
        self.config = SimulationConfig(stochastic=False)

    def simulate_many(self, calls: list[SimulationCall]) -> list[Any]:
        """One forward pass per distinct (K, horizon) over all calls; returns a SimulationResult per call."""
        from world_model.simulation import WorldModelSimulator

        out: list[Any] = [None] * len(calls)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, c in enumerate(calls):
            groups[(int(np.asarray(c.candidates).shape[1]), int(c.horizon))].append(i)
        for (_, horizon), members in groups.items():
            hist = np.stack([fit_window(h, self.model.window) for i in members for h in calls[i].histories])
            cands = np.concatenate([np.asarray(calls[i].candidates, dtype=np.int64) for i in members])
            ids = np.arange(len(hist))
            sim = WorldModelSimulator(self.model, self.config)
            # decisions since admission of each newest state (the world model's time input): the
            # history is taken to start at admission, as the agent's observation counts it
            sim.reset(ids, hist, start_steps=np.array([len(h) - 1 for i in members for h in calls[i].histories]))
            result = sim.simulate(ids, cands, horizon)
            start = 0
            for i in members:
                n = len(calls[i].histories)
                out[i] = result.take(np.arange(start, start + n))
                start += n
        return out


def trajectory_summary(result: Any, actions: list[int], spec_names: list[str]) -> list[dict[str, Any]]:
    """What-if answer for one patient: per action the predicted path of MAP, lactate and SOFA, risks, uncertainty."""
    rows = []
    for k, a in enumerate(actions):
        row: dict[str, Any] = {
            "index": int(a), "fluid_bin": int(a) // 5, "vaso_bin": int(a) % 5,
            "trajectory": {"MeanBP": _path(result.map[0, k]), "Arterial_lactate": _path(result.lactate[0, k]),
                           "SOFA": _path(result.sofa[0, k])},
            "death_risk": float(result.risk_of_death[0, k]), "uncertainty": float(result.uncertainty[0, k]),
        }
        for field, attr in (("expected_return", "expected_return"), ("discharge_risk", "risk_of_discharge")):
            value = getattr(result, attr, None)
            if value is not None:
                row[field] = float(np.asarray(value)[0, k])
        rows.append(row)
    return rows


def _path(values: np.ndarray) -> list[float] | None:
    v = np.asarray(values, dtype=np.float64)
    return None if np.isnan(v).all() else [round(float(x), 4) for x in v]


WORLD_MODEL_CPUS = 0.25


@serve.deployment(
    max_ongoing_requests=32,  # cheap calls; each is already a batch from the agent
    health_check_period_s=10, health_check_timeout_s=30,
    graceful_shutdown_wait_loop_s=1, graceful_shutdown_timeout_s=20,
    ray_actor_options={"num_cpus": WORLD_MODEL_CPUS},
)
class WorldModelDeployment:
    def __init__(self, agent_dir: str):
        self.service = WorldModelService(agent_dir)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, calls: list[SimulationCall]) -> list[Any]:
        return await asyncio.to_thread(self.service.simulate_many, calls)

    async def simulate(self, histories: list[np.ndarray], candidates: np.ndarray, horizon: int) -> Any:
        """The agent's tool: SimulationResult for B patients x K candidates."""
        return await self._batched(SimulationCall(histories, np.asarray(candidates), int(horizon)))

    async def what_if(self, history: np.ndarray, actions: list[int], horizon: int) -> list[dict[str, Any]]:
        result = await self._batched(SimulationCall([history], np.asarray([actions], dtype=np.int64), int(horizon)))
        return trajectory_summary(result, actions, self.service.model.feature_names)

    def ready(self) -> bool:
        return self.service.model is not None

    def check_health(self) -> None:
        if self.service.model is None:
            raise RuntimeError("world model not loaded")
