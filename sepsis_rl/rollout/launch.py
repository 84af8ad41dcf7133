"""Start Ray, the simulator pool and the rollout workers for a rollout run; gather their episodes."""

from __future__ import annotations

import argparse

import pyarrow as pa
import ray

from sepsis_rl.agent.fallback import Fallback
from sepsis_rl.models import resolve_base_model
from sepsis_rl.ray_start import start_ray
from sepsis_rl.rollout.psr import AgentConfig
from sepsis_rl.rollout.worker import RolloutWorker, WorkerConfig
from world_model.pool import PoolConfig, SimulatorPool
from world_model.simulation import SimulationConfig


def run_rollout(args: argparse.Namespace) -> pa.Table:
    model_path = resolve_base_model(args.model)
    started = start_ray(max(2, args.workers + args.shards))  # loopback-only unless RAY_ADDRESS names a cluster
    try:
        pool = SimulatorPool(args.world_model, SimulationConfig(max_steps=args.max_steps, seed=args.seed),
                             PoolConfig(num_shards=args.shards, num_cpus_per_shard=0.5))
        agent = AgentConfig(k=args.k, horizon=args.horizon, use_simulator=not args.no_simulator,
                            fallback=Fallback.REPEAT_LAST, temperature=args.temperature)
        cfg = WorkerConfig(model_path=model_path, cohort_dir=args.cohort, split=args.split, engine=args.engine,
                           agent=agent, batch_episodes=8)
        workers = [RolloutWorker.options(num_cpus=1).remote(i, cfg, pool) for i in range(args.workers)]
        per = args.episodes // args.workers
        tables = ray.get([w.run.remote(per, 1, args.seed) for w in workers])
        pool.shutdown()
        return pa.concat_tables(tables)
    finally:
        if started:
            ray.shutdown()
