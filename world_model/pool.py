"""``SimulatorPool``: the client that spreads simulated patients over simulator shards and survives shard deaths.

Episodes are assigned to shards (``episode_id % num_shards``, so any client agrees where an episode
lives); a call for many episodes becomes one call per shard, issued concurrently. The client records
each episode's start history and actions; when a shard dies, it is restarted under the same actor name
(clients converge on one replacement) and the client's episodes on it are rebuilt by replaying their
actions. Because the simulator's randomness is keyed by (seed, episode, step), the rebuilt episodes are
exactly the lost ones and the caller only sees a retry. Episode ids must be unique across clients.
"""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import ray
from ray.exceptions import RayActorError

from world_model.shard import SimulatorShard
from world_model.simulation import SimulationConfig, SimulationResult, StepResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolConfig:
    num_shards: int = 2
    num_cpus_per_shard: float = 1.0
    resources: tuple[tuple[str, float], ...] = ()  # custom Ray resources per shard (node placement)
    threads_per_shard: int = 1
    max_wait_s: float = 0.001  # micro-batching window inside a shard
    max_restarts: int = 3  # per call
    call_timeout_s: float = 300.0


def load_model(model_dir: str) -> Any:
    """Model factory shipped to shards (loads the checkpoint inside the actor, never pickles weights)."""
    from world_model.checkpoint import load_world_model

    from sepsis_rl import storage

    return load_world_model(storage.local_copy(model_dir))  # a URI: downloaded once per node


def in_memory_model(model: Any) -> Any:
    """Model factory for a model object already built in the driver (shipped to shards by Ray)."""
    return model


@dataclass
class _Record:
    history: np.ndarray
    start_step: int
    noise_key: int
    actions: list[int] = field(default_factory=list)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else text


def _concat(results: list[Any], order: np.ndarray) -> Any:
    """Stitch per-shard results back into the caller's episode order."""
    merged = type(results[0])(**{k: np.concatenate([getattr(r, k) for r in results]) for k in results[0].__dict__})
    return merged.take(np.argsort(order))


class SimulatorPool:
    """Batched, fault-tolerant access to world-model simulator shards (Ray actors)."""

    def __init__(
        self,
        model_dir: str | None = None,
        sim_config: SimulationConfig = SimulationConfig(),
        config: PoolConfig = PoolConfig(),
        model_factory: Callable[[], Any] | None = None,
        name: str | None = None,
    ):
        if model_factory is None:
            if model_dir is None:
                raise ValueError("SimulatorPool needs model_dir or model_factory")
            from sepsis_rl import storage

            if not storage.exists(storage.join(str(model_dir), "config.json")):
                raise FileNotFoundError(f"{model_dir} is not a world-model folder (no config.json)")
            load_model(str(model_dir))  # a corrupt model fails here, in one line, not as shards dying on restart
            model_factory = functools.partial(load_model, str(model_dir))
        self.config = config
        self.sim_config = sim_config
        self.name = name or f"sepsis-rl-sim-{uuid.uuid4().hex[:8]}"
        self._factory = model_factory
        self._records: dict[int, _Record] = {}
        self.shards = [self._start(i) for i in range(config.num_shards)]

    # ------------------------------------------------------------------------------------- shards
    def _start(self, i: int) -> Any:
        return SimulatorShard.options(
            name=f"{self.name}-{i}", get_if_exists=True, num_cpus=self.config.num_cpus_per_shard,
            resources=dict(self.config.resources),
            max_concurrency=256,
        ).remote(self._factory, self.sim_config, i, self.config.max_wait_s, 4096, self.config.threads_per_shard)

    def shard_of(self, episode_ids: np.ndarray) -> np.ndarray:
        return np.asarray(episode_ids, dtype=np.int64) % len(self.shards)

    def _restart(self, i: int) -> None:
        log.warning("simulator shard %d died: restarting it and replaying its episodes", i)
        try:
            ray.kill(self.shards[i], no_restart=True)
        except Exception:  # already gone
            pass
        self.shards[i] = self._start(i)
        mine = np.array([e for e in self._records if e % len(self.shards) == i], dtype=np.int64)
        if mine.size == 0:
            return
        starts = np.array([self._records[int(e)].start_step for e in mine], dtype=np.int64)
        keys = np.array([self._records[int(e)].noise_key for e in mine], dtype=np.int64)
        ray.get(self.shards[i].reset.remote(mine, self._stack_histories(mine), starts, keys),
                timeout=self.config.call_timeout_s)
        longest = max(len(self._records[int(e)].actions) for e in mine)
        for t in range(longest):
            ids = np.array([e for e in mine if len(self._records[int(e)].actions) > t], dtype=np.int64)
            acts = np.array([self._records[int(e)].actions[t] for e in ids], dtype=np.int64)
            ray.get(self.shards[i].step.remote(ids, acts), timeout=self.config.call_timeout_s)

    def _stack_histories(self, ids: np.ndarray) -> np.ndarray:
        hs = [self._records[int(e)].history for e in ids]
        t = max(len(h) for h in hs)
        return np.stack([np.concatenate([np.repeat(h[:1], t - len(h), axis=0), h]) for h in hs])

    def _call(self, method: str, ids: np.ndarray, *per_episode: np.ndarray, extra: tuple = ()) -> list[Any]:
        """Call ``method`` on every shard owning some of ``ids``, concurrently; restart and retry dead ones.

        Only the calls that failed are retried: a shard whose call succeeded has already applied it, and
        stepping its episodes twice would silently corrupt them.
        """
        owner = self.shard_of(ids)
        groups = {i: np.nonzero(owner == i)[0] for i in range(len(self.shards)) if np.any(owner == i)}
        results: dict[int, Any] = {}
        pending = list(groups)
        for attempt in range(self.config.max_restarts + 1):
            refs = {i: getattr(self.shards[i], method).remote(ids[groups[i]], *(a[groups[i]] for a in per_episode), *extra)
                    for i in pending}
            failed = []
            for i, ref in refs.items():
                try:
                    results[i] = ray.get(ref, timeout=self.config.call_timeout_s)
                except RayActorError as e:
                    if getattr(e, "actor_init_failed", False):  # the model does not load: restarting cannot help
                        raise RuntimeError(f"simulator shard {i} could not start: {_last_line(str(e))}") from None
                    failed.append(i)
            if not failed:
                break
            if attempt == self.config.max_restarts:
                raise RuntimeError(f"simulator shards {failed} kept dying ({attempt + 1} attempts at {method!r})")
            for i in failed:
                self._restart(i)
            pending = failed
        order = np.concatenate([groups[i] for i in groups])
        return [[results[i] for i in groups], order]

    # ---------------------------------------------------------------------------------------- API
    def reset(self, episode_ids: np.ndarray, history: np.ndarray, start_steps: np.ndarray | None = None,
              noise_keys: np.ndarray | None = None) -> np.ndarray:
        """Start episodes on their shards (``WorldModelSimulator.reset``: ``noise_keys`` default to the ids)."""
        ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
        h = np.asarray(history, dtype=np.float64)
        h = h[:, None, :] if h.ndim == 2 else h
        if len(h) != len(ids):
            raise ValueError(f"{len(ids)} episode ids for {len(h)} start histories")
        starts = (np.full(len(ids), h.shape[1] - 1, dtype=np.int64) if start_steps is None
                  else np.asarray(start_steps, dtype=np.int64).reshape(-1))
        keys = ids if noise_keys is None else np.asarray(noise_keys, dtype=np.int64).reshape(-1)
        if len(keys) != len(ids):
            raise ValueError(f"{len(keys)} noise keys for {len(ids)} episodes")
        results, order = self._call("reset", ids, h, starts, keys)
        for eid, hist, st, key in zip(ids, h, starts, keys):
            self._records[int(eid)] = _Record(hist.copy(), int(st), int(key))
        return np.concatenate(results)[np.argsort(order)]

    def step(self, episode_ids: np.ndarray, actions: np.ndarray) -> StepResult:
        ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
        acts = np.asarray(actions).reshape(-1)
        unknown = [int(e) for e in ids if int(e) not in self._records]
        if unknown:
            raise KeyError(f"unknown episode id {unknown[0]} (reset it through this pool first)")
        results, order = self._call("step", ids, acts)
        for eid, a in zip(ids, acts):
            self._records[int(eid)].actions.append(int(a))
        return _concat(results, order)

    def simulate(self, episode_ids: np.ndarray, candidates: np.ndarray, horizon: int,
                 continuation: Any = None) -> SimulationResult:
        ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
        results, order = self._call("simulate", ids, np.asarray(candidates), extra=(int(horizon), continuation))
        return _concat(results, order)

    def release(self, episode_ids: np.ndarray) -> None:
        """Forget episodes, and wait until the shards have: calls from *different* callers (rollout workers and the
        driver share shards) are not ordered, so a late release could otherwise drop an episode another caller
        has just reset under the same id (the held-out evaluation and the baselines share ids on purpose)."""
        ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
        owner = self.shard_of(ids)
        refs = [self.shards[int(i)].release.remote(ids[owner == i]) for i in np.unique(owner)]
        try:
            ray.get(refs, timeout=self.config.call_timeout_s)
        except RayActorError:  # a dead shard forgets anyway (its replacement replays only live records)
            pass
        for eid in ids.tolist():
            self._records.pop(eid, None)

    def stats(self) -> list[dict[str, Any]]:
        return ray.get([s.stats.remote() for s in self.shards], timeout=self.config.call_timeout_s)

    def shutdown(self) -> None:
        for s in self.shards:
            try:
                ray.kill(s, no_restart=True)
            except Exception:
                pass
