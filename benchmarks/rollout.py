"""Rollout benchmark: rollout workers vs the bare engine on the same prompts; 1 vs 2 workers. Prints JSON.

    python benchmarks/rollout.py [--model default|DIR] [--world-model DIR --cohort DIR] [--episodes 8]

The bare engine generates, in this process, the first-decision proposal prompts of the same start
states with the same sampling settings; the overhead ratio is the workers' generated tokens/s over the
bare engine's. Without --world-model a small cohort and a tiny world model are made first.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from sepsis_rl.agent.grammar import PROPOSE_CLOSE
from sepsis_rl.cohort.store import read_spec
from sepsis_rl.models import resolve_base_model
from sepsis_rl.rollout.engine import SamplingParams
from sepsis_rl.rollout.psr import AgentConfig, PSRAgent
from sepsis_rl.rollout.starts import StartStates
from sepsis_rl.rollout.transformers_engine import TransformersEngine
from sepsis_rl.rollout.worker import RolloutWorker, WorkerConfig
from world_model.pool import PoolConfig, SimulatorPool, in_memory_model
from world_model.simulation import SimulationConfig


def world(args: argparse.Namespace, tmp: Path):
    if args.world_model:
        from world_model.checkpoint import load_world_model

        return load_world_model(args.world_model), args.cohort
    from sepsis_rl.cohort.synth import synthesize_cohort
    from world_model.presets import get_preset
    from world_model.train import train_world_model

    cohort = str(synthesize_cohort(tmp / "cohort", 500, seed=0, progress=False))
    return train_world_model(cohort, get_preset("tiny")).model, cohort


def bare_engine(model_path: str, cohort: str, n: int, agent_cfg: AgentConfig) -> dict:
    engine = TransformersEngine(model_path)
    agent = PSRAgent(engine, engine.tokenizer, read_spec(cohort), agent_cfg)
    states = StartStates.from_cohort(cohort, "test").states[:n]
    prompts = [agent._encode(agent._chat([{"role": "system", "content": agent.system},
                                          {"role": "user", "content": agent.renderer.render(s, None, 0, None)}]))
               for s in states]
    params = SamplingParams(agent_cfg.proposal_tokens, agent_cfg.temperature, 0, (PROPOSE_CLOSE,))
    t0 = time.perf_counter()
    gens = engine.generate(prompts, params)
    dt = time.perf_counter() - t0
    tokens = sum(len(g.token_ids) for g in gens)
    return {"tokens": tokens, "seconds": round(dt, 2), "tokens_per_s": round(tokens / dt, 1),
            "mean_prompt_tokens": round(float(np.mean([len(p) for p in prompts])), 1)}


def workers_run(n_workers: int, model_path: str, cohort: str, model, episodes: int, max_steps: int,
                agent_cfg: AgentConfig) -> dict:
    pool = SimulatorPool(model_factory=functools.partial(in_memory_model, model),
                         sim_config=SimulationConfig(seed=0, max_steps=max_steps),
                         config=PoolConfig(num_shards=1, num_cpus_per_shard=0.25))
    cfg = WorkerConfig(model_path=model_path, cohort_dir=cohort, split="test", agent=agent_cfg,
                       batch_episodes=max(1, episodes // n_workers))
    workers = [RolloutWorker.options(num_cpus=0.5).remote(i, cfg, pool) for i in range(n_workers)]
    ray.get([w.__ray_ready__.remote() for w in workers])  # exclude model loading from the timing
    t0 = time.perf_counter()
    table = pa.concat_tables(ray.get([w.run.remote(episodes // n_workers, 1, 0) for w in workers]))
    dt = time.perf_counter() - t0
    for w in workers:
        ray.kill(w)
    pool.shutdown()
    decisions = int(np.sum(table.column("length").to_numpy()))
    tokens = int(np.sum(table.column("generated_tokens").to_numpy()))
    gen_s = float(np.sum(table.column("generate_s").to_numpy())) / n_workers
    failures = int(np.sum(table.column("parse_failures").to_numpy()))
    return {"workers": n_workers, "decisions": decisions, "seconds": round(dt, 2),
            "decisions_per_s": round(decisions / dt, 3), "tokens_per_s": round(tokens / dt, 1),
            "generate_share_of_time": round(gen_s / dt, 3), "parse_failure_rate": round(failures / (2 * decisions), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default")
    ap.add_argument("--world-model")
    ap.add_argument("--cohort")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=2)
    args = ap.parse_args()
    model_path = resolve_base_model(args.model)
    agent_cfg = AgentConfig(proposal_tokens=48, prescription_tokens=16)
    out: dict = {"model": model_path, "episodes": args.episodes, "max_steps": args.max_steps}
    with tempfile.TemporaryDirectory() as tmp:
        model, cohort = world(args, Path(tmp))
        out["bare_engine"] = bare_engine(model_path, cohort, args.episodes, agent_cfg)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        out["workers_1"] = workers_run(1, model_path, cohort, model, args.episodes, args.max_steps, agent_cfg)
        out["workers_2"] = workers_run(2, model_path, cohort, model, args.episodes, args.max_steps, agent_cfg)
        ray.shutdown()
    out["overhead_ratio_tokens_per_s"] = round(out["workers_1"]["tokens_per_s"] / out["bare_engine"]["tokens_per_s"], 3)
    out["scaling_2_over_1_workers"] = round(out["workers_2"]["decisions_per_s"] / out["workers_1"]["decisions_per_s"], 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
