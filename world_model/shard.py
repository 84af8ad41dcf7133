"""``SimulatorShard``: a Ray actor holding one world-model replica and a set of live simulated patients.

Calls are coarse (whole batches of episodes) and concurrent calls from many rollout workers are merged
by a micro-batcher into one forward pass per shard. Dashboard metrics: ``sepsis_rl_sim_steps_total``,
``sepsis_rl_sim_batch_size``, ``sepsis_rl_sim_queue_depth``, ``sepsis_rl_sim_steps_per_s``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np
import ray

from world_model.batching import MicroBatcher
from world_model.simulation import SimulationConfig, SimulationResult, StepResult, WorldModelSimulator


def _metrics(shard_id: int) -> dict[str, Any]:
    from ray.util import metrics

    from sepsis_rl.telemetry import run_tags

    tags = run_tags(shard=str(shard_id))
    keys = ("run_id", "shard")
    out = {
        "steps": metrics.Counter("sepsis_rl_sim_steps_total", "simulated patient-steps", tag_keys=keys),
        "batch": metrics.Histogram("sepsis_rl_sim_batch_size", "rows per forward pass",
                                   boundaries=[1, 4, 16, 64, 256, 1024, 4096], tag_keys=keys),
        "queue": metrics.Gauge("sepsis_rl_sim_queue_depth", "requests waiting for a batch", tag_keys=keys),
        "rate": metrics.Gauge("sepsis_rl_sim_steps_per_s", "patient-steps per second", tag_keys=keys),
    }
    for m in out.values():
        m.set_default_tags(tags)
    return out


class SimulatorShardImpl:
    """The actor's body (plain class so it can also be exercised without Ray)."""

    def __init__(self, model_factory: Callable[[], Any], config: SimulationConfig, shard_id: int = 0,
                 max_wait_s: float = 0.002, max_batch: int = 4096, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.shard_id = shard_id
        self.sim = WorldModelSimulator(model_factory(), config)
        self.metrics = _metrics(shard_id) if ray.is_initialized() else None
        self._t0, self._steps, self._batches, self._requests = time.perf_counter(), 0, 0, 0
        self._step_batcher: MicroBatcher = MicroBatcher(self._run_steps, lambda r: len(r[0]), max_wait_s, max_batch,
                                                        on_batch=self._record_batch)

    # one forward pass for many callers' step requests
    def _run_steps(self, requests: list[tuple[np.ndarray, np.ndarray]]) -> list[StepResult]:
        ids = np.concatenate([r[0] for r in requests])
        acts = np.concatenate([r[1] for r in requests])
        res = self.sim.step(ids, acts)
        self._count(len(ids))
        bounds = np.cumsum([0] + [len(r[0]) for r in requests])
        return [res.take(np.arange(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def _record_batch(self, rows: int, requests: int) -> None:
        self._batches += 1
        self._requests += requests
        if self.metrics:
            self.metrics["batch"].observe(rows)
            self.metrics["queue"].set(requests)

    def _count(self, n: int) -> None:
        self._steps += n
        if self.metrics:
            self.metrics["steps"].inc(n)
            self.metrics["rate"].set(self._steps / max(time.perf_counter() - self._t0, 1e-9))

    async def reset(self, episode_ids: np.ndarray, history: np.ndarray, start_steps: np.ndarray | None = None,
                    noise_keys: np.ndarray | None = None) -> np.ndarray:
        return self.sim.reset(episode_ids, history, start_steps, noise_keys)

    async def step(self, episode_ids: np.ndarray, actions: np.ndarray) -> StepResult:
        ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
        self.sim.slots(ids)  # validate alone: a bad request must not fail its batch-mates
        acts = self.sim.check_actions(actions, (len(ids),))
        return await self._step_batcher.submit((ids, acts))

    async def simulate(self, episode_ids: np.ndarray, candidates: np.ndarray, horizon: int,
                       continuation: Any = None) -> SimulationResult:
        res = self.sim.simulate(episode_ids, candidates, horizon, continuation)
        self._count(res.sofa.size)
        return res

    async def release(self, episode_ids: np.ndarray) -> None:
        self.sim.release(episode_ids)

    async def history(self, episode_id: int) -> tuple[np.ndarray, list[int], int, bool]:
        return self.sim.history(episode_id)

    async def stats(self) -> dict[str, Any]:
        return {"shard": self.shard_id, "pid": os.getpid(), "live_episodes": self.sim.live_episodes,
                "steps": self._steps, "step_batches": self._batches, "step_requests": self._requests,
                "queue_depth": self._step_batcher.queue_depth}


SimulatorShard = ray.remote(SimulatorShardImpl)
