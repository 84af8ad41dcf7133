"""``sepsis-rl evaluate RUN_DIR | --cohort DIR``: the report of every policy (see ``sepsis_rl.eval.evaluate``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

from sepsis_rl.cohort.validation import CohortInputError
from sepsis_rl.rollout.dtypes import DTYPES
from sepsis_rl.rollout.engine_choice import ENGINE_CHOICES, resolve_engine

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="off-policy estimates, true values, safety and baselines of every policy")
    p.add_argument("run_dir", nargs="?", help="a finished pipeline run folder (its agent/, stage models, cohort)")
    p.add_argument("--cohort", help="evaluate on this cohort without a run folder (non-LLM policies only)")
    p.add_argument("--world-model", help="world model for planners and in-model values (default: the run's)")
    p.add_argument("--policies", help="comma-separated policy names (default: the standard set)")
    p.add_argument("--episodes", type=int, default=None, help="test patients for true values (default: all)")
    p.add_argument("--llm-episodes", type=int, default=50, help="test patients/stays for LLM policies (default 50)")
    p.add_argument("--stage-episodes", type=int, default=None,
                   help="test patients for the stage checkpoints (base_llm*, after_sft, after_bc; default: --llm-episodes)")
    p.add_argument("--no-stage-ope", action="store_true",
                   help="stage checkpoints in truth only (no off-policy estimates) when the cohort has a ground truth")
    p.add_argument("--llm-stays", type=int, default=None,
                   help="logged test stays for the LLM policies' off-policy estimates (default: --llm-episodes)")
    p.add_argument("--llm-cpus", type=float, default=2.0,
                   help="CPUs each LLM policy's task reserves (default 2: a CPU engine uses every core it gets)")
    p.add_argument("--llm-gpus", type=float, default=0.0, help="GPUs each LLM policy's task reserves (default 0)")
    p.add_argument("--llm-dtype", choices=DTYPES, default="auto",
                   help="vLLM engine dtype of LLM policies (default auto: bf16 on GPUs and CPUs with native bf16)")
    p.add_argument("--repeats", type=int, default=1, help="truth rollouts per patient (default 1)")
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for CIs (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llm-probs", choices=("epsilon", "sampled"), default="epsilon",
                   help="LLM action probabilities: greedy softened by --epsilon, or N sampled decisions")
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                   help="engine of the LLM policies: auto (default: vllm where installed, else transformers)")
    p.add_argument("--behaviour", choices=("logged", "estimate"), default="logged",
                   help="behaviour propensities: the cohort's logged ones, or an estimated behaviour policy")
    p.add_argument("--baselines", choices=("default", "tiny"), default="default", help="offline-RL training size")
    p.add_argument("--no-fqe", action="store_true", help="skip FQE (and DR/WDR) for a quick look")
    p.add_argument("--llm-in-model", action="store_true",
                   help="also play LLM policies in the world model (in-model value; a third pass of slow decisions)")
    p.add_argument("--stall-minutes", type=float, default=180.0,
                   help="report the policies still running as failed when none finishes for this long (default 180)")
    p.add_argument("--out", help="report folder (default RUN_DIR/eval)")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from sepsis_rl.cohort.store import read_spec
    from sepsis_rl.cohort.synth import GroundTruth
    from sepsis_rl.eval.evaluate import EvalConfig, load_logged
    from sepsis_rl.eval.llm_policy import LLMProbConfig
    from sepsis_rl.eval.registry import COHORT_POLICIES, DEFAULT_POLICIES, LLM_POLICIES, check_names
    from sepsis_rl.eval.run import run_evaluation, write_outputs, write_partial

    sources = _sources(args)
    read_spec(sources.cohort)  # a missing or malformed cohort fails here, in one line
    try:
        GroundTruth.load(sources.cohort)
        has_truth = True
    except ValueError:
        has_truth = False
    default = DEFAULT_POLICIES if sources.run_dir else tuple(
        n for n in DEFAULT_POLICIES if n in COHORT_POLICIES or (n.startswith("wm_") and sources.world_model))
    names = [n.strip() for n in args.policies.split(",") if n.strip()] if args.policies else list(default)
    check_names(names, sources, has_truth)
    for flag, value, lo in (("--episodes", args.episodes, 2), ("--llm-episodes", args.llm_episodes, 2),
                            ("--stage-episodes", args.stage_episodes, 2), ("--llm-stays", args.llm_stays, 1),
                            ("--repeats", args.repeats, 1), ("--bootstrap", args.bootstrap, 1), ("--samples", args.samples, 1)):
        if value is not None and value < lo:
            raise CohortInputError(f"{flag} must be >= {lo}, got {value}")
    if args.llm_cpus < 0 or args.llm_gpus < 0:
        raise CohortInputError(f"--llm-cpus and --llm-gpus must be >= 0, got {args.llm_cpus} and {args.llm_gpus}")
    if not 0 < args.gamma <= 1 or not 0 <= args.epsilon <= 1:
        raise CohortInputError("--gamma must be in (0, 1] and --epsilon in [0, 1]")
    cfg = EvalConfig(policies=tuple(names), patients=args.episodes, llm_patients=args.llm_episodes,
                     llm_ope_episodes=args.llm_stays or args.llm_episodes, stage_patients=args.stage_episodes,
                     stage_ope=not args.no_stage_ope, repeats=args.repeats, gamma=args.gamma, n_boot=args.bootstrap,
                     seed=args.seed, baselines=args.baselines, engine=_engine(args.engine), behaviour=args.behaviour,
                     fqe=not args.no_fqe, llm_in_model=args.llm_in_model,
                     llm_cpus=args.llm_cpus, llm_gpus=args.llm_gpus, llm_dtype=args.llm_dtype, llm_probs=LLMProbConfig(args.llm_probs, args.epsilon, args.samples))
    load_logged(sources, cfg, cfg.split, 2)  # propensities present (or estimable) before any work starts
    out = Path(args.out) if args.out else Path(sources.run_dir or ".") / "eval"
    _check_writable(out)
    log.info("evaluating %d policies on %s (truth: %s; LLM policies: %s)", len(names), sources.cohort,
             "yes" if has_truth else "no ground truth", ", ".join(n for n in names if n in LLM_POLICIES) or "none")
    if args.stall_minutes <= 0:
        raise CohortInputError(f"--stall-minutes must be > 0, got {args.stall_minutes}")
    partial = out.with_name(f"{out.name}.partial.json")
    report = run_evaluation(sources, cfg, task_timeout_s=60 * args.stall_minutes,
                            on_partial=lambda r: write_partial(r, partial))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_outputs(report, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        partial.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(_headline(report, out))
    return 0


def _sources(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sepsis_rl.eval.registry import Sources

    if args.run_dir and args.cohort:
        raise CohortInputError("give a run folder or --cohort, not both")
    if args.run_dir:
        if not Path(args.run_dir).is_dir():
            raise CohortInputError(f"run folder {args.run_dir} does not exist")
        src = Sources.from_run(args.run_dir)
    elif args.cohort:
        src = Sources(cohort=args.cohort)
    else:
        raise CohortInputError("give a run folder (sepsis-rl evaluate RUN_DIR) or --cohort DIR")
    if args.world_model:
        if not Path(args.world_model).is_dir():
            raise CohortInputError(f"world model folder {args.world_model} does not exist")
        src.world_model = args.world_model
    return src


def _check_writable(out: Path) -> None:
    parent = out.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise CohortInputError(f"cannot write the report: {parent} is not a writable folder")


def _headline(report: dict, out: Path) -> str:
    lines = [f"report: {out / 'report.md'}"]
    for name, p in report["policies"].items():
        t, dr = p.get("true"), p.get("ope", {}).get("dr")
        if p["status"] != "ok":
            lines.append(f"  {name:<18} FAILED: {p['error']}")
            continue
        true = f"true return {t['return']:.2f} survival {t['survival']:.3f}" if t else "no ground truth"
        est = f"DR {dr['value']:.2f} [{dr['ci'][0]:.2f}, {dr['ci'][1]:.2f}]" if dr and dr.get("value") is not None else ""
        lines.append(f"  {name:<18} {true}  {est}")
    return "\n".join(lines) + "\n" + json.dumps({"gamma": report["gamma"]})


def _engine(kind: str) -> str:
    """The LLM policies' engine, ``auto`` resolved here (and printed) so the report records what ran."""
    try:
        engine = resolve_engine(kind)
    except ValueError as e:
        raise CohortInputError(f"--engine: {e}") from None
    if kind == "auto":
        print(f"engine: auto -> {engine}", flush=True)
    return engine
