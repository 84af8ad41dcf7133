"""Rollout benchmark: rollout workers vs the bare engine on the same prompts; 1 vs 2 workers. Prints JSON.

    python benchmarks/rollout.py [--model default|DIR] [--world-model DIR --cohort DIR] [--episodes 8]

Like for like: the generate calls one rollout worker made (every proposal and prescription batch,
rebuilt token for token from its episodes) are replayed on the bare engine in this process, with the
same batches, sampling settings and thread count (1); the overhead ratio is the worker's generated
tokens/s over the bare engine's. Scaling: 2 workers (1 thread each) over 1. Without --world-model a
small cohort and a tiny world model are made first. Use ``--model`` with a BC-trained agent (a run's
``bc/model``) for realistic output lengths: the base model rarely follows the grammar.
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

from sepsis_rl.agent.grammar import PRESCRIBE_CLOSE, PROPOSE_CLOSE
from sepsis_rl.models import resolve_base_model
from sepsis_rl.rollout.engine import SamplingParams
from sepsis_rl.rollout.psr import AgentConfig
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


def generation_calls(table: pa.Table, k_tokens: tuple[int, int]) -> list[tuple[list[list[int]], int, str]]:
    """The generate calls the workers made, rebuilt from their episodes: per decision index, one batch of
    proposal prompts, then one batch of prescription prompts (prompt + proposal + tool output)."""
    calls = []
    tokens, masks, plens = (table.column(c).to_pylist() for c in ("tokens", "loss_mask", "prompt_lengths"))
    longest = max(len(t) for t in tokens)
    for d in range(longest):
        live = [e for e in range(len(tokens)) if d < len(tokens[e])]
        props, rxs = [], []
        for e in live:
            toks, mask, plen = tokens[e][d], masks[e][d], plens[e][d]
            end_first = next(j for j in range(plen, len(mask)) if not mask[j])  # proposal ends, tool output starts
            start_second = next(j for j in range(end_first, len(mask)) if mask[j])
            props.append(toks[:plen])
            rxs.append(toks[:start_second])
        calls += [(props, k_tokens[0], PROPOSE_CLOSE), (rxs, k_tokens[1], PRESCRIBE_CLOSE)]
    return calls


def bare_engine(model_path: str, calls: list, agent_cfg: AgentConfig, threads: int) -> dict:
    """The same generate calls, same batches and settings, in this process with no Ray, no simulator."""
    import torch

    torch.set_num_threads(threads)
    engine = TransformersEngine(model_path)
    engine.generate(calls[0][0][:1], SamplingParams(4, agent_cfg.temperature, 0))  # warm-up
    tokens, seconds = 0, 0.0
    for i, (prompts, max_tokens, stop) in enumerate(calls):
        t0 = time.perf_counter()
        gens = engine.generate(prompts, SamplingParams(max_tokens, agent_cfg.temperature, i, (stop,)))
        seconds += time.perf_counter() - t0
        tokens += sum(len(g.token_ids) for g in gens)
    return {"threads": threads, "calls": len(calls), "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1)}


def workers_run(n_workers: int, model_path: str, cohort: str, model, episodes: int, max_steps: int,
                agent_cfg: AgentConfig, threads: int = 1) -> tuple[dict, pa.Table]:
    pool = SimulatorPool(model_factory=functools.partial(in_memory_model, model),
                         sim_config=SimulationConfig(seed=0, max_steps=max_steps),
                         config=PoolConfig(num_shards=1, num_cpus_per_shard=0.25))
    cfg = WorkerConfig(model_path=model_path, cohort_dir=cohort, split="test", agent=agent_cfg,
                       batch_episodes=max(1, episodes // n_workers), threads=threads)
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
    return {"workers": n_workers, "threads_per_worker": threads, "decisions": decisions, "seconds": round(dt, 2),
            "decisions_per_s": round(decisions / dt, 3), "tokens_per_s": round(tokens / dt, 1),
            "generate_share_of_time": round(gen_s / dt, 3), "parse_failure_rate": round(failures / (2 * decisions), 3)}, table


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
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        out["workers_1"], table = workers_run(1, model_path, cohort, model, args.episodes, args.max_steps, agent_cfg, 1)
        out["workers_2"], _ = workers_run(2, model_path, cohort, model, args.episodes, args.max_steps, agent_cfg, 1)
        ray.shutdown()
        calls = generation_calls(table, (agent_cfg.proposal_tokens, agent_cfg.prescription_tokens))
        out["bare_engine"] = bare_engine(model_path, calls, agent_cfg, threads=1)
    # like for like: the single worker's generate calls replayed on the bare engine, both with 1 thread
    out["overhead_ratio_tokens_per_s"] = round(out["workers_1"]["tokens_per_s"] / out["bare_engine"]["tokens_per_s"], 3)
    out["scaling_2_over_1_workers"] = round(out["workers_2"]["decisions_per_s"] / out["workers_1"]["decisions_per_s"], 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
