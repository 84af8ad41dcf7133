"""World-model stepping benchmark: in-process vs Ray shards, batched vs one-at-a-time. Prints JSON.

    python benchmarks/simulator.py [--model WORLD_MODEL_DIR] [--seconds 5]

Without --model, a synthetic cohort is made and a world model trained with the ``tiny`` preset.
All figures are patient-steps per second measured in this one run, so ratios compare like with like.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray

from sepsis_rl.rollout.starts import StartStates
from world_model.pool import PoolConfig, SimulatorPool, in_memory_model
from world_model.simulation import SimulationConfig, WorldModelSimulator


def load_or_train(model_dir: str | None, cohort_dir: str | None, tmp: Path):
    from sepsis_rl.cohort.synth import synthesize_cohort

    if cohort_dir is None:
        cohort_dir = str(synthesize_cohort(tmp / "cohort", 2000, seed=0, progress=False))
    if model_dir:
        from world_model.checkpoint import load_world_model

        return load_world_model(model_dir), cohort_dir
    from world_model.presets import get_preset
    from world_model.train import train_world_model

    return train_world_model(cohort_dir, get_preset("tiny")).model, cohort_dir


def steps_per_s(step_fn, batch: int, seconds: float) -> float:
    """Repeatedly step a batch of episodes (restarting them as they end) for ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += step_fn(batch)
    return n / (time.perf_counter() - t0)


class Driver:
    """Keeps up to ``batch`` live episodes per caller and steps them; refills in bulk, as rollout workers do."""

    def __init__(self, sim, starts: np.ndarray, base: int):
        self.sim, self.starts, self.base, self.next = sim, starts, base, 0
        self.ids: np.ndarray | None = None
        self.rng = np.random.default_rng(base % 2**32)

    def _refill(self, batch: int) -> None:
        if self.ids is not None and len(self.ids):
            self.sim.release(self.ids)
        self.ids = self.base + self.next + np.arange(batch)
        self.next += batch
        self.sim.reset(self.ids, self.starts[self.rng.integers(0, len(self.starts), batch)])

    def __call__(self, batch: int) -> int:
        if self.ids is None or len(self.ids) < 0.75 * batch:
            self._refill(batch)
        res = self.sim.step(self.ids, self.rng.integers(0, 25, len(self.ids)))
        n = len(self.ids)
        if res.done.any():
            self.sim.release(self.ids[res.done])
            self.ids = self.ids[~res.done]
        return n


def concurrent_rate(pool, starts, callers: int, batch: int, seconds: float) -> float:
    drivers = [Driver(pool, starts, (i + 1) * 10**8) for i in range(callers)]
    counts = [0] * callers
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        while time.perf_counter() < stop:
            counts[i] += drivers[i](batch)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(callers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model")
    ap.add_argument("--cohort")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--callers", type=int, default=4, help="concurrent callers for the pool measurements")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in-process and per shard (equal resources)")
    args = ap.parse_args()
    out: dict[str, float | int | str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model, cohort = load_or_train(args.model, args.cohort, Path(tmp))
        starts = StartStates.from_cohort(cohort, "test").states
        import torch

        torch.set_num_threads(args.threads)
        cfg = SimulationConfig(seed=0)
        out["threads"] = args.threads
        local = Driver(WorldModelSimulator(model, cfg), starts, 0)
        out["inproc_batch1"] = steps_per_s(local, 1, args.seconds)
        out["inproc_batch256"] = steps_per_s(local, 256, args.seconds)
        sim = WorldModelSimulator(model, cfg)
        ids = np.arange(64)
        sim.reset(ids, starts[:64])
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < args.seconds:
            sim.simulate(ids, np.tile(np.array([0, 6, 12, 18]), (64, 1)), 4)
            n += 64 * 4 * 4
        out["simulate_k4_h4_64patients_steps_per_s"] = n / (time.perf_counter() - t0)

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        factory = functools.partial(in_memory_model, model)
        for shards in (1, 2):
            pool = SimulatorPool(model_factory=factory, sim_config=cfg,
                                 config=PoolConfig(num_shards=shards, num_cpus_per_shard=1.0, threads_per_shard=args.threads))
            out[f"pool{shards}_batch256_one_caller"] = steps_per_s(Driver(pool, starts, 5 * 10**9), 256, args.seconds)
            out[f"pool{shards}_concurrent_{args.callers}x256"] = concurrent_rate(pool, starts, args.callers, 256, args.seconds)
            pool.shutdown()
        ray.shutdown()
    out = {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}
    out["ratio_pool1_over_inproc_batch256"] = round(out["pool1_batch256_one_caller"] / out["inproc_batch256"], 3)
    out["ratio_2shards_over_1shard_concurrent"] = round(
        out[f"pool2_concurrent_{args.callers}x256"] / out[f"pool1_concurrent_{args.callers}x256"], 3)
    out["ratio_batched_over_batch1"] = round(out["inproc_batch256"] / out["inproc_batch1"], 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
