"""``sepsis-rl serve AGENT_DIR`` (run the app in the foreground) and ``sepsis-rl serve-config`` (write config.yaml)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from pathlib import Path

from sepsis_rl.rollout.engine_choice import ENGINE_CHOICES

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a trained agent folder over HTTP (Ray Serve), in the foreground")
    p.add_argument("agent_dir", help="the pipeline's RUN/agent folder")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1, help="agent replicas (each owns an engine)")
    p.add_argument("--max-replicas", type=int, default=None, help="autoscaling maximum (default: --replicas)")
    p.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                   help="auto (default): vLLM where installed, on CPU or GPU, else transformers")
    p.add_argument("--engine-cpus", type=float, default=1.0, help="CPUs each agent replica reserves (default 1)")
    p.add_argument("--engine-gpus", type=float, default=None,
                   help="GPUs each agent replica reserves (default: 1 where the cluster has GPUs, else 0)")
    p.add_argument("--no-resource-check", action="store_true",
                   help="deploy even when the cluster lacks the replicas' resources now (an autoscaler will add nodes)")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require 'Authorization: Bearer $VAR' on every route but /healthz")
    p.add_argument("--no-batching", action="store_true", help="one decision per engine call")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.set_defaults(func=run_serve)

    c = sub.add_parser("serve-config", help="write the Serve deploy config (serve/config.yaml) of the application")
    c.add_argument("--agent-dir", default=None, help="agent folder path as seen by the cluster's replicas")
    c.add_argument("-o", "--out", default=None, help="output file (default: print)")
    c.set_defaults(func=run_config)


def _check(args: argparse.Namespace) -> None:
    from serve.agent_dir import AgentDirError, load_agent_dir

    load_agent_dir(args.agent_dir)
    if args.api_key_env and not os.environ.get(args.api_key_env):
        raise AgentDirError(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset")
    if not 1 <= args.port <= 65535:
        raise AgentDirError(f"--port must be in 1..65535, got {args.port}")
    if args.replicas < 1 or (args.max_replicas is not None and args.max_replicas < args.replicas):
        raise AgentDirError("--replicas must be >= 1 and --max-replicas >= --replicas")
    if not args.engine_cpus > 0 or (args.engine_gpus is not None and args.engine_gpus < 0):
        raise AgentDirError(f"--engine-cpus must be > 0 and --engine-gpus >= 0, got {args.engine_cpus} and {args.engine_gpus}")
    from sepsis_rl.rollout.engine_choice import resolve_engine

    try:
        resolve_engine(args.engine)
    except ValueError as e:
        raise AgentDirError(f"--engine: {e}") from None


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_serve(args: argparse.Namespace) -> int:
    _check(args)
    import ray
    from ray import serve

    from serve.app import AppArgs, build_app
    from serve.config_build import APP_NAME

    from serve.agent_dir import AgentDirError
    from serve.app import engine_label, missing_resources

    started = not ray.is_initialized()
    if started:
        # RAY_ADDRESS set: join that cluster; else a private local instance (never someone else's `ray start`)
        address = os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, num_cpus=args.num_cpus if address == "local" else None, dashboard_host="127.0.0.1")
    cluster = ray.cluster_resources()
    gpus = args.engine_gpus if args.engine_gpus is not None else (1.0 if cluster.get("GPU", 0) > 0 else 0.0)
    app_args = AppArgs(agent_dir=str(Path(args.agent_dir).resolve()), engine=args.engine, replicas=args.replicas,
                       max_replicas=args.max_replicas, api_key_env=args.api_key_env, batching=not args.no_batching,
                       engine_cpus=args.engine_cpus, engine_gpus=gpus)
    lack = None if args.no_resource_check else missing_resources(app_args, cluster)
    if lack:
        if started:
            ray.shutdown()
        raise AgentDirError(lack)
    print(f"engine: {engine_label(app_args)}; each agent replica reserves CPU {args.engine_cpus:g}, GPU {gpus:g}",
          flush=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background (SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app(app_args), name=APP_NAME, route_prefix="/", blocking=False)
        print(f"serving {args.agent_dir} at http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("shutting down", flush=True)
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
    return 0


def run_config(args: argparse.Namespace) -> int:
    from serve.config_build import DEFAULT_ARGS, render_config

    cfg = DEFAULT_ARGS if args.agent_dir is None else DEFAULT_ARGS.model_copy(update={"agent_dir": args.agent_dir})
    text = render_config(cfg)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0
