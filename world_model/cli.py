"""``sepsis-rl world-model train | evaluate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sepsis_rl.cohort.validation import CohortInputError
from world_model.presets import DEFAULT_ARCH, PRESET_NAMES


def register(sub: argparse._SubParsersAction) -> None:
    wm = sub.add_parser("world-model", help="train and evaluate the Clinical World Model")
    wsub = wm.add_subparsers(dest="world_model_command", required=True)

    train = wsub.add_parser("train", help="train a dynamics ensemble on a cohort (train split, early stop on val)")
    train.add_argument("--cohort", required=True, help="cohort folder")
    train.add_argument("--out", required=True, help="model folder to create")
    train.add_argument("--preset", default="cpu", choices=PRESET_NAMES, help="size and budget (default cpu)")
    train.add_argument("--arch", default=DEFAULT_ARCH, choices=("mlp", "gru"), help=f"default {DEFAULT_ARCH}")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--max-minutes", type=float, help="override the preset's wall-clock cap")
    train.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(func=_train)

    ev = wsub.add_parser("evaluate", help="evaluate a model on a cohort split and write metrics.json")
    ev.add_argument("--model", required=True, help="model folder")
    ev.add_argument("--cohort", required=True, help="cohort folder")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--out", help="metrics file (default MODEL/metrics.json)")
    ev.add_argument("--json", action="store_true", help="print the full metrics as JSON")
    ev.add_argument("--no-counterfactual", action="store_true", help="skip the ground-truth counterfactual check")
    ev.add_argument("--cf-patients", type=int, help="fresh patients for the counterfactual check")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=_evaluate)


def _train(args: argparse.Namespace) -> int:
    from world_model.checkpoint import save_world_model
    from world_model.presets import get_preset
    from world_model.train import train_world_model

    from sepsis_rl.cohort.store import read_cohort
    from sepsis_rl.errors import check_writable

    if Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists (pass --overwrite to replace it)")
    check_writable(args.out, "model folder")
    read_cohort(args.cohort, splits=("train", "val"))  # a corrupt cohort fails now, not after set-up
    overrides = {"progress": not args.no_progress}
    if args.max_minutes is not None:
        if args.max_minutes <= 0:
            raise CohortInputError(f"--max-minutes must be > 0, got {args.max_minutes}")
        overrides["max_minutes"] = args.max_minutes
    preset = get_preset(args.preset, arch=args.arch, seed=args.seed, **overrides)
    result = train_world_model(args.cohort, preset)
    info = {"preset": args.preset, "cohort": str(Path(args.cohort).resolve()), "seed": args.seed,
            "train": result.summary()}
    out = save_world_model(result.model, args.out, info=info, overwrite=args.overwrite)
    final = result.history[-1]
    print(f"trained {args.arch} world model ({preset.model.members} members) in {result.seconds:.1f}s, "
          f"{len(result.history)} epochs ({result.stopped}); val loss {final['val_total']:.3f}; saved to {out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from world_model.checkpoint import load_world_model
    from world_model.evaluate import EvalConfig, evaluate_world_model, write_metrics

    if args.cf_patients is not None and args.cf_patients < 1:
        raise CohortInputError(f"--cf-patients must be >= 1, got {args.cf_patients}")
    from sepsis_rl.errors import check_writable

    check_writable(args.out or Path(args.model) / "metrics.json", "metrics file")
    model = load_world_model(args.model)
    cfg = EvalConfig(split=args.split, counterfactual=not args.no_counterfactual,
                     cf_patients=args.cf_patients, seed=args.seed)
    metrics = evaluate_world_model(model, args.cohort, cfg)
    path = write_metrics(args.out or Path(args.model) / "metrics.json", metrics)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(format_summary(metrics))
        print(f"wrote {path}")
    return 0


def format_summary(m: dict) -> str:
    """The headline figures, one per line."""
    keys = ("state_mae", "persistence_mae", "state_mae_reduction_vs_persistence", "vent_auroc", "outcome_auroc",
            "outcome_auprc", "outcome_ece", "counterfactual_state_mae", "fresh_factual_state_mae")
    lines = [f"{k:36s} {_fmt(m.get(k))}" for k in keys if k in m]
    ol = m.get("open_loop_mae", {})
    lines.append(f"{'open_loop_mae (h=1..)':36s} " + " ".join(_fmt(v) for v in ol.values()))
    return "\n".join(lines)


def _fmt(v: object) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
