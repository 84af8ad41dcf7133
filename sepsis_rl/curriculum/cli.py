"""``sepsis-rl pipeline`` (every stage) and ``sepsis-rl train --stage`` (one stage) on a run directory."""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from sepsis_rl.curriculum.config import PRESETS, ConfigError, load_config
from sepsis_rl.curriculum.pipeline import STAGES, PipelineOptions, run_pipeline

TRAIN_STAGES = {"sft": ("sft",), "bc": ("bc",), "rl": ("rl", "final")}


def _overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes key=value (e.g. rl.iterations=2), got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory (created; holds every stage's output)")
    p.add_argument("--cohort", help="use this cohort folder instead of synthesising one")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (finished stages are skipped)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. rl.iterations=2")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local runs)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="cohort, world model, SFT, PSR BC and RL, then a held-out check")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=PRESETS, default="cpu", help="shipped configuration (default: cpu)")
    src.add_argument("--config", help="a YAML configuration file (see sepsis_rl/configs/*.yaml)")
    _common(p)
    p.set_defaults(func=_pipeline)

    t = sub.add_parser("train", help="run one curriculum stage on a run directory (earlier stages are run if missing)")
    t.add_argument("--stage", required=True, choices=sorted(TRAIN_STAGES), help="sft, bc or rl")
    t.add_argument("--config", required=True, help="a preset name or a YAML configuration file")
    _common(t)
    t.set_defaults(func=_train)


def _run(name: str, args: argparse.Namespace, stages: tuple[str, ...]) -> int:
    from sepsis_rl.errors import check_writable

    cfg = load_config(name, _overrides(args.set))
    check_writable(args.out, "run folder")
    summary = run_pipeline(cfg, PipelineOptions(args.out, args.cohort, args.resume, not args.no_dashboard, stages))
    print(json.dumps({k: v for k, v in summary.items() if k != "stages"} | {"stages": sorted(summary["stages"])}, indent=2))
    print(f"summary: {args.out}/summary.json")
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    return _run(args.config or args.preset, args, STAGES)


def _train(args: argparse.Namespace) -> int:
    """A stage needs the ones before it: they run first unless the run directory already has them."""
    wanted = TRAIN_STAGES[args.stage]
    upto = STAGES.index(wanted[-1])
    return _run(args.config, args, STAGES[: upto + 1])
