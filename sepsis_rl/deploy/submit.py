"""``sepsis-rl submit``: send a pipeline run to a Ray cluster as a Ray job (``ray job submit``, from Python).

The job ships this source tree as its ``working_dir`` with ``cluster/runtime_env.yaml``; the cluster's image (or
the launcher's setup commands) provides the dependencies. Ray 2.59+ clusters require token authentication, so the
client turns ``RAY_AUTH_MODE=token`` on unless the caller chose a mode, and fails early when no token is at hand.
The entrypoint is checked with the project's own argument parser before anything is uploaded: a typo fails here,
not an hour later on the cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import secrets
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from sepsis_rl.telemetry import RUN_ID_ENV

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_SEPARATORS = ("&&", ";")


class SubmitError(Exception):
    """A submission that cannot go ahead (bad entrypoint, no token, unreachable cluster, bad runtime env)."""


@dataclass(frozen=True)
class SubmitRequest:
    address: str
    entrypoint: str
    working_dir: Path
    runtime_env_file: Path
    run_id: str
    entrypoint_num_gpus: float = 0.0
    entrypoint_num_cpus: float = 0.0
    extra_env: dict[str, str] = field(default_factory=dict)


def default_entrypoint(preset: str, out: str, extra: list[str] | None = None) -> str:
    """The job the cluster runs: the whole pipeline into a run folder on shared storage or a URI."""
    return shlex.join(["sepsis-rl", "pipeline", "--preset", preset, "--out", out, *(extra or [])])


def entrypoint_commands(entrypoint: str) -> list[list[str]]:
    """Split a shell entrypoint into its commands (``a && b``, ``a; b``), each a token list."""
    lexer = shlex.shlex(entrypoint, posix=True, punctuation_chars=";&")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for tok in lexer:
        if tok in _SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(tok)
    return [c for c in commands if c]


def check_entrypoint(entrypoint: str) -> list[argparse.Namespace]:
    """Every command must be ``sepsis-rl ...`` with options the CLI accepts; returns the parsed arguments."""
    from sepsis_rl.cli import build_parser

    commands = entrypoint_commands(entrypoint)
    if not commands:
        raise SubmitError("entrypoint is empty")
    parsed = []
    for cmd in commands:
        if cmd[0] != "sepsis-rl":
            raise SubmitError(f"entrypoint: {shlex.join(cmd)!r} is not a sepsis-rl command")
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parsed.append(build_parser().parse_args(cmd[1:]))
        except SystemExit:
            last = (err.getvalue().strip().splitlines() or ["invalid arguments"])[-1]
            raise SubmitError(f"entrypoint: {shlex.join(cmd)!r}: {last}") from None
    return parsed


def load_runtime_env(req: SubmitRequest) -> dict[str, Any]:
    """``cluster/runtime_env.yaml`` plus the working dir and the run id every metric is tagged with."""
    try:
        env = yaml.safe_load(req.runtime_env_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SubmitError(f"{req.runtime_env_file}: cannot read runtime env: {e}") from None
    if not isinstance(env, dict):
        raise SubmitError(f"{req.runtime_env_file}: runtime env must be a mapping")
    if not req.working_dir.is_dir():
        raise SubmitError(f"--working-dir {req.working_dir}: not a directory")
    env["working_dir"] = str(req.working_dir.resolve())
    env["env_vars"] = {**(env.get("env_vars") or {}), **req.extra_env, RUN_ID_ENV: req.run_id}
    return env


def enable_token_auth() -> None:
    """Token auth is on by default on Ray 2.59+ clusters: the client must say so and have the token."""
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        from ray._raylet import Config

        Config.initialize("")  # Ray read its config at import: refresh it, as ``ray.init`` does for token mode
    if os.environ["RAY_AUTH_MODE"].lower() != "token":
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not os.environ.get("RAY_AUTH_TOKEN") and not path.is_file():
        raise SubmitError(
            f"RAY_AUTH_MODE=token but no token: set RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or write {path} "
            "(`ray get-auth-token` on the head node prints it)"
        )


def http_address(address: str) -> str:
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    if "://" in address:
        raise SubmitError(f"--address {address}: give the dashboard's http(s) address, e.g. {DEFAULT_ADDRESS}")
    return f"http://{address.rstrip('/')}"


def job_url(address: str, job_id: str) -> str:
    return f"{http_address(address)}/#/jobs/{job_id}"


def new_run_id(prefix: str = "sepsis-rl") -> str:
    return f"{prefix}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _client(address: str) -> Any:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(http_address(address))
    except AuthenticationError as e:
        raise SubmitError(f"the Ray cluster at {address} refused the token: {str(e).splitlines()[0]}") from None
    except (ConnectionError, RuntimeError) as e:
        raise SubmitError(f"cannot reach the Ray dashboard at {address}: {str(e).splitlines()[0]}") from None


def submit(req: SubmitRequest) -> tuple[Any, str]:
    """Check, then submit; returns the client and the job's submission id (= the run id)."""
    check_entrypoint(req.entrypoint)
    runtime_env = load_runtime_env(req)
    enable_token_auth()
    client = _client(req.address)
    try:
        job_id = client.submit_job(
            entrypoint=req.entrypoint, submission_id=req.run_id, runtime_env=runtime_env,
            entrypoint_num_gpus=req.entrypoint_num_gpus or None, entrypoint_num_cpus=req.entrypoint_num_cpus or None,
            metadata={"project": "sepsis-rl", "run_id": req.run_id},
        )
    except RuntimeError as e:  # e.g. the submission id exists, or the runtime env is refused
        raise SubmitError(f"the cluster refused the job: {' '.join(str(e).split())[:400]}") from None
    return client, job_id


def wait(client: Any, job_id: str, timeout_s: float, poll_s: float = 2.0) -> str:
    """Poll until the job ends (or the timeout passes: then the job keeps running and we say so)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise SubmitError(f"job {job_id} still {status} after {timeout_s:.0f}s (it keeps running)")
        time.sleep(poll_s)


def register(sub: argparse._SubParsersAction) -> None:
    from sepsis_rl.curriculum.config import PRESETS

    p = sub.add_parser("submit", help="run the pipeline on a Ray cluster as a Ray job (ray job submit)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS,
                   help=f"the cluster's dashboard address (default: $RAY_ADDRESS or {DEFAULT_ADDRESS})")
    p.add_argument("--preset", choices=PRESETS, default="gpu", help="pipeline preset (default: gpu)")
    p.add_argument("--out", help="run folder on shared storage or a URI (s3://, gs://); required unless --entrypoint")
    p.add_argument("--entrypoint", help="a different sepsis-rl command line (checked before submission)")
    p.add_argument("--working-dir", default=".", help="source tree to ship (default: .)")
    p.add_argument("--runtime-env", default="cluster/runtime_env.yaml", help="runtime env YAML")
    p.add_argument("--run-id", help=f"job submission id and metrics run_id tag (default: generated); sets ${RUN_ID_ENV}")
    p.add_argument("--entrypoint-num-gpus", type=float, default=0.0, help="GPUs reserved for the driver (default 0)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=0.0,
                   help="CPUs reserved for the driver (default 0: it runs on the head, heavy work goes to actors)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for the job")
    p.add_argument("--wait", action="store_true", help="wait for the job to finish; exit 0 only if it SUCCEEDED")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="seconds --wait waits (default 1 day)")
    p.set_defaults(func=_submit)


def _request(args: argparse.Namespace) -> SubmitRequest:
    if not args.entrypoint and not args.out:
        raise SubmitError("give --out (the run folder on shared storage or a URI) or --entrypoint")
    extra = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SubmitError(f"--env takes KEY=VALUE, got {item!r}")
        extra[key] = value
    return SubmitRequest(
        address=args.address, entrypoint=args.entrypoint or default_entrypoint(args.preset, args.out),
        working_dir=Path(args.working_dir), runtime_env_file=Path(args.runtime_env),
        run_id=args.run_id or new_run_id(), entrypoint_num_gpus=args.entrypoint_num_gpus,
        entrypoint_num_cpus=args.entrypoint_num_cpus, extra_env=extra,
    )


def _submit(args: argparse.Namespace) -> int:
    client, job_id = submit(_request(args))
    print(f"submitted job {job_id}")
    print(f"dashboard: {job_url(args.address, job_id)}")
    print(f"logs: ray job logs --address {http_address(args.address)} --follow {job_id}")
    if not args.wait:
        return 0
    status = wait(client, job_id, args.timeout)
    print(f"job {job_id}: {status}")
    if status != "SUCCEEDED":
        tail = "\n".join(client.get_job_logs(job_id).splitlines()[-20:])
        print(tail, file=sys.stderr)
        return 1
    return 0
