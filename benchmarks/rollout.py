"""Rollout benchmark: rollout workers vs the bare engine on the same prompts; engines, prompt styles, workers. JSON.

    python benchmarks/rollout.py [--model default|DIR] [--world-model DIR --cohort DIR] [--episodes 8]
        [--engine transformers|vllm] [--prompt-style terse|guided|compact|verbose] [--horizon 1] [--threads 1]
        [--dtype float32|bfloat16|auto] [--before-model DIR --before-style verbose --before-horizon 4]

Like for like: the generate calls one rollout worker made (every proposal and prescription batch,
rebuilt token for token from its episodes) are replayed on the bare engine in this process, with the
same batches, sampling settings and thread count; the overhead ratio is the worker's generated
tokens/s over the bare engine's. Scaling (transformers): 2 workers (1 thread each) over 1. Per decision:
prompt tokens (the proposal call), tool-output tokens, generated tokens, and the share of the FLOP limit
(2 x parameters x the decision's tokens, each counted once, per second, over ``--peak-gflops``; by
default per setup 220 GFLOP/s for fp32 and 850 for a bf16 vLLM engine, the figures given for these 2
cores; torch's own bf16 matmul reaches ~420 on the model's shapes here). ``--dtype`` is the vLLM engine's
dtype (auto: bf16 where the CPU has it natively); for any dtype but float32 the worker's behaviour
log-probabilities are compared with fp32 teacher forcing of the same tokens (what the fp32 learner
computes: its importance ratios start from these). ``--before-model`` measures the earlier setup
(transformers, 1 worker, 1 thread, its prompt style and horizon) in the same run, so the speed-up is a
ratio of one run's numbers. Without
--world-model a small cohort and a tiny world model are made first. Use ``--model`` with a BC-trained
agent (a run's ``bc/model``) for realistic output lengths: the base model rarely follows the grammar.
"""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout carries the JSON only

import argparse  # noqa: E402
import functools
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from sepsis_rl.agent.grammar import PRESCRIBE_CLOSE, PROPOSE_CLOSE
from sepsis_rl.agent.prompts import PROMPT_STYLES
from sepsis_rl.models import resolve_base_model
from sepsis_rl.rollout.dtypes import DTYPES, engine_dtype_options, resolve_dtype
from sepsis_rl.rollout.engine import SamplingParams
from sepsis_rl.rollout.psr import AgentConfig
from sepsis_rl.rollout.worker import RolloutWorker, WorkerConfig, make_engine
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


def bare_engine(model_path: str, calls: list, agent_cfg: AgentConfig, threads: int, engine_kind: str = "transformers",
                dtype: str = "float32") -> dict:
    """The same generate calls, same batches and settings, in this process with no Ray, no simulator."""
    import torch

    torch.set_num_threads(threads)
    engine = make_engine(engine_kind, model_path, **engine_dtype_options(engine_kind, dtype))
    engine.generate(calls[0][0][:1], SamplingParams(4, agent_cfg.temperature, 0))  # warm-up
    tokens, seconds = 0, 0.0
    by_call = {"proposal_s": 0.0, "prescription_s": 0.0}  # calls alternate: proposals, then prescriptions
    for i, (prompts, max_tokens, stop) in enumerate(calls):
        t0 = time.perf_counter()
        gens = engine.generate(prompts, SamplingParams(max_tokens, agent_cfg.temperature, i, (stop,)))
        dt = time.perf_counter() - t0
        seconds += dt
        by_call["proposal_s" if i % 2 == 0 else "prescription_s"] += dt
        tokens += sum(len(g.token_ids) for g in gens)
    if hasattr(engine, "shutdown"):
        engine.shutdown()
    return {"engine": engine_kind, "threads": threads, "calls": len(calls), "tokens": tokens,
            "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            **{k: round(v, 2) for k, v in by_call.items()}}


def token_counts(table: pa.Table) -> dict:
    """Tokens per decision: the proposal call's prompt, the tool output (+ template), the generated ones."""
    prompt = tool = gen = total = 0
    n = 0
    for toks, mask, plen in zip(*(table.column(c).to_pylist() for c in ("tokens", "loss_mask", "prompt_lengths"))):
        for t, m, p in zip(toks, mask, plen):
            g = sum(m)
            prompt, gen, tool, total, n = prompt + p, gen + g, tool + len(t) - p - g, total + len(t), n + 1
    return {"prompt": round(prompt / n, 1), "tool_output": round(tool / n, 1), "generated": round(gen / n, 1),
            "total": round(total / n, 1)}


def logprob_agreement(table: pa.Table, model_path: str, temperature: float) -> dict:
    """The engine's behaviour log-probabilities against fp32 teacher forcing (the transformers engine) of the
    same generated tokens: mean and max absolute difference, and how often exp(difference), the importance
    ratio a learner would start from, leaves PPO's [0.8, 1.2] clip range."""
    from sepsis_rl.rollout.transformers_engine import TransformersEngine

    ref = TransformersEngine(model_path)
    diffs = []
    for toks, mask, lps in zip(*(table.column(c).to_pylist() for c in ("tokens", "loss_mask", "logprobs"))):
        for t, m, lp in zip(toks, mask, lps):
            teacher = ref.score_tokens([t], temperature)[0]
            diffs += [teacher[j - 1] - lp[j] for j in range(1, len(t)) if m[j]]
    d = np.asarray(diffs)  # log of the first update's importance ratio, learner (fp32) over engine
    ratio = np.exp(d)
    return {"tokens": int(d.size), "mean_abs_diff": round(float(np.abs(d).mean()), 5),
            "max_abs_diff": round(float(np.abs(d).max()), 4),
            "ratio_outside_clip_0.2": round(float(np.mean((ratio > 1.2) | (ratio < 0.8))), 4)}


def parameter_count(model_path: str) -> int:
    from safetensors import safe_open

    n = 0
    for f in Path(model_path).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                n += int(np.prod(st.get_slice(k).get_shape()))
    return n


def workers_run(n_workers: int, model_path: str, cohort: str, model, episodes: int, max_steps: int,
                agent_cfg: AgentConfig, threads: int = 1, engine: str = "transformers",
                dtype: str = "float32") -> tuple[dict, pa.Table]:
    pool = SimulatorPool(model_factory=functools.partial(in_memory_model, model),
                         sim_config=SimulationConfig(seed=0, max_steps=max_steps),
                         config=PoolConfig(num_shards=1, num_cpus_per_shard=0.25))
    cfg = WorkerConfig(model_path=model_path, cohort_dir=cohort, split="test", agent=agent_cfg, engine=engine,
                       batch_episodes=max(1, episodes // n_workers), threads=threads,
                       engine_options=engine_dtype_options(engine, dtype))
    workers = [RolloutWorker.options(num_cpus=0.5).remote(i, cfg, pool) for i in range(n_workers)]
    ray.get([w.__ray_ready__.remote() for w in workers])  # exclude model loading from the timing
    ray.get([w.run.remote(1, 1, 10**6) for w in workers])  # and the engine's first-call warm-up (as the bare engine's)
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
    return {"engine": engine, **({"dtype": dtype} if engine == "vllm" else {}), "prompt_style": agent_cfg.prompt_style, "horizon": agent_cfg.horizon, "workers": n_workers,
            "threads_per_worker": threads, "decisions": decisions, "seconds": round(dt, 2),
            "decisions_per_s": round(decisions / dt, 3), "tokens_per_s": round(tokens / dt, 1),
            "generate_share_of_time": round(gen_s / dt, 3), "parse_failure_rate": round(failures / (2 * decisions), 3)}, table


def measure(args: argparse.Namespace, model_path: str, cohort: str, model, agent_cfg: AgentConfig, engine: str,
            threads: int, scaling: bool, dtype: str = "float32") -> dict:
    """One setup: a worker's decisions/s, the bare engine on its calls, tokens and FLOP share per decision."""
    out: dict = {"model": model_path}
    out["worker"], table = workers_run(1, model_path, cohort, model, args.episodes, args.max_steps, agent_cfg, threads,
                                       engine, dtype)
    if scaling:
        out["workers_2"], _ = workers_run(2, model_path, cohort, model, args.episodes, args.max_steps, agent_cfg, 1, engine)
        out["scaling_2_over_1_workers"] = round(out["workers_2"]["decisions_per_s"] / out["worker"]["decisions_per_s"], 3)
    calls = generation_calls(table, (agent_cfg.proposal_tokens, agent_cfg.prescription_tokens))
    out["bare_engine"] = bare_engine(model_path, calls, agent_cfg, threads, engine, dtype)
    if engine == "vllm" and dtype != "float32":
        out["logprobs_vs_fp32_teacher"] = logprob_agreement(table, model_path, agent_cfg.temperature)
    # like for like: the worker's generate calls replayed on the bare engine, same engine and threads
    out["overhead_ratio_tokens_per_s"] = round(out["worker"]["tokens_per_s"] / out["bare_engine"]["tokens_per_s"], 3)
    out["tokens_per_decision"] = tok = token_counts(table)
    flops = 2 * parameter_count(model_path) * tok["total"] * out["worker"]["decisions_per_s"]
    out["gflop_per_s"] = round(flops / 1e9, 1)
    # the limit of the setup's arithmetic: bf16 only in a bf16 vLLM engine (the before setup is fp32 transformers)
    peak = args.peak_gflops or (850.0 if engine == "vllm" and dtype == "bfloat16" else 220.0)
    out["peak_gflops"] = peak
    out["share_of_flop_limit"] = round(flops / (peak * 1e9), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default")
    ap.add_argument("--world-model")
    ap.add_argument("--cohort")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=2)
    ap.add_argument("--engine", choices=("transformers", "vllm"), default="transformers")
    ap.add_argument("--prompt-style", choices=PROMPT_STYLES, default="terse")
    ap.add_argument("--horizon", type=int, default=1, help="simulated steps per candidate (the tool's horizon)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the worker (vLLM uses every core)")
    ap.add_argument("--before-model", help="also measure the earlier setup on this model (transformers, 1 thread)")
    ap.add_argument("--before-style", choices=PROMPT_STYLES, default="verbose")
    ap.add_argument("--before-horizon", type=int, default=4)
    ap.add_argument("--dtype", choices=DTYPES, default="float32",
                    help="vLLM engine dtype (auto: bf16 on CPUs with native bf16)")
    ap.add_argument("--peak-gflops", type=float, default=None,
                    help="the FLOP limit in GFLOP/s (default: 220 for fp32 setups, 850 for a bf16 vLLM engine)")
    args = ap.parse_args()
    import torch

    args.dtype = resolve_dtype(args.dtype, on_cpu=not torch.cuda.is_available())
    model_path = resolve_base_model(args.model)
    agent_cfg = AgentConfig(proposal_tokens=48, prescription_tokens=16, horizon=args.horizon, prompt_style=args.prompt_style)
    out: dict = {"episodes": args.episodes, "max_steps": args.max_steps}
    with tempfile.TemporaryDirectory() as tmp:
        model, cohort = world(args, Path(tmp))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            if args.before_model:
                before = replace(agent_cfg, prompt_style=args.before_style, horizon=args.before_horizon)
                out["before"] = measure(args, resolve_base_model(args.before_model), cohort, model, before,
                                        "transformers", 1, scaling=True)
            out["now"] = measure(args, model_path, cohort, model, agent_cfg, args.engine, args.threads,
                                 scaling=args.engine == "transformers", dtype=args.dtype)
        finally:
            ray.shutdown()
    if "before" in out:
        out["speedup_decisions_per_s"] = round(out["now"]["worker"]["decisions_per_s"] / out["before"]["worker"]["decisions_per_s"], 2)
        out["speedup_over_2_workers_before"] = round(out["now"]["worker"]["decisions_per_s"] / out["before"]["workers_2"]["decisions_per_s"], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
