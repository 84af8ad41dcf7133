"""The ``sepsis-rl`` command line. Each command group lives in its own module and registers itself here.

User errors (bad files, specs, arguments) print one line ``sepsis-rl: error: ...`` and exit with code 2;
they never leave partial output behind.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from sepsis_rl.cohort.cli import register as register_cohort
from sepsis_rl.cohort.store import CohortFormatError
from sepsis_rl.cohort.validation import CohortInputError
from sepsis_rl.curriculum.config import ConfigError
from sepsis_rl.curriculum.run_lock import RunLockedError
from sepsis_rl.curriculum.visibility import RunDirNotSharedError
from sepsis_rl.deploy.submit import SubmitError
from sepsis_rl.errors import UserError, one_line, user_error
from sepsis_rl.models import ModelFetchError
from sepsis_rl.models_cli import register as register_models

USER_ERRORS: tuple[type[BaseException], ...] = (
    CohortInputError, CohortFormatError, ConfigError, FileExistsError, FileNotFoundError, ModelFetchError,
    RunLockedError, RunDirNotSharedError, SubmitError,
    UserError, PermissionError, NotADirectoryError, IsADirectoryError,
)

Registrar = Callable[[argparse._SubParsersAction], None]


def _registrars() -> list[Registrar]:
    from sepsis_rl.curriculum.cli import register as register_curriculum
    from sepsis_rl.deploy.submit import register as register_submit
    from sepsis_rl.eval.cli import register as register_evaluate
    from sepsis_rl.rollout.cli import register as register_rollout
    from serve.cli import register as register_serve
    from world_model.cli import register as register_world_model

    return [register_cohort, register_models, register_world_model, register_rollout, register_curriculum,
            register_evaluate, register_submit, register_serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sepsis-rl", description="Train, evaluate and serve an LLM agent for ICU sepsis treatment."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:  # also a user error raised inside a Ray actor: printed as the actor's own line
        print(f"sepsis-rl: error: {one_line(user_error(e, USER_ERRORS) or e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
