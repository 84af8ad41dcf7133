"""Start Ray, the simulator pool and the rollout workers for a rollout run; gather their episodes.

Inputs are checked in the driver first (cohort, LLM and world-model files, the output folder), so a
user's mistake is one line in a second rather than actors dying. Each worker's share is cut into
batch-sized jobs run through a ``WorkerSet``: a worker that dies mid-run is restarted and its unfinished
batches replayed with the same seeds, so the result equals an undisturbed run.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

import pyarrow as pa
import ray

from sepsis_rl.agent.fallback import Fallback
from sepsis_rl.errors import check_llm_dir, check_writable
from sepsis_rl.models import resolve_base_model
from sepsis_rl.ray_start import start_ray
from sepsis_rl.rollout.psr import AgentConfig
from sepsis_rl.rollout.resilient import Job, WorkerSet
from sepsis_rl.rollout.worker import RolloutWorker, WorkerConfig
from world_model.pool import PoolConfig, SimulatorPool
from world_model.simulation import SimulationConfig


def preflight(args: argparse.Namespace, model_path: str) -> None:
    """Every input the actors will read, read once here (cheap), so errors name the file in one line."""
    from sepsis_rl.rollout.starts import StartStates
    from world_model.checkpoint import load_world_model

    check_writable(args.out, "episodes file")
    StartStates.from_cohort(args.cohort, args.split)  # spec, split file and its Parquet
    check_llm_dir(model_path)
    load_world_model(args.world_model)  # config, normaliser, weights (finite)


def rollout_jobs(n_workers: int, episodes_per_worker: int, seed: int, batch: int, group_size: int = 1) -> list[Job]:
    """Batch-sized ``run`` jobs, in the order their episodes appear in the output."""
    return [Job(w, "run", (episodes_per_worker, group_size, seed),
                {"slot": w, "first_id": 0, "part": (lo, min(lo + batch, episodes_per_worker))})
            for w in range(n_workers) for lo in range(0, episodes_per_worker, batch)]


def _make_worker(cfg: WorkerConfig, pool: SimulatorPool, slot: int) -> Any:
    return RolloutWorker.options(num_cpus=1).remote(slot, cfg, pool)


def run_rollout(args: argparse.Namespace, on_result: Any = None) -> pa.Table:
    """``on_result(worker_set, job_index)`` (fault tests): called as each job finishes, e.g. to kill a worker."""
    model_path = resolve_base_model(args.model)
    preflight(args, model_path)
    started = start_ray(max(2, args.workers + args.shards))  # loopback-only unless RAY_ADDRESS names a cluster
    try:
        pool = SimulatorPool(args.world_model, SimulationConfig(max_steps=args.max_steps, seed=args.seed),
                             PoolConfig(num_shards=args.shards, num_cpus_per_shard=0.5))
        agent = AgentConfig(k=args.k, horizon=args.horizon, use_simulator=not args.no_simulator,
                            fallback=Fallback(getattr(args, "fallback", "best_candidate")), temperature=args.temperature,
                            prompt_style=getattr(args, "prompt_style", "guided"),
                            **{k: getattr(args, k) for k in ("proposal_tokens", "prescription_tokens") if hasattr(args, k)})
        cfg = WorkerConfig(model_path=model_path, cohort_dir=args.cohort, split=args.split, engine=args.engine,
                           agent=agent, batch_episodes=args.batch_episodes)
        workers = WorkerSet(functools.partial(_make_worker, cfg, pool), args.workers)
        try:
            workers.check_ready()
            jobs = rollout_jobs(args.workers, args.episodes // args.workers, args.seed, args.batch_episodes)
            tables = workers.run(jobs, on_result)
        finally:
            workers.kill_all()
            pool.shutdown()
        return pa.concat_tables(tables)
    finally:
        if started:
            ray.shutdown()
