"""Serving benchmark: latency and throughput of the Ray Serve app on each engine, batching on vs off, vs the
bare engine. JSON.

    python benchmarks/serve.py AGENT_DIR [--engines transformers vllm] [--requests 64] [--concurrency 1 16]
                                         [--max-batch-size 16]

Starts a local Ray instance and Serve on a free loopback port. For each engine, the application runs with
``@serve.batch`` batching (``on``) and then with batches of one (``off``), one application at a time so
they do not share the cores. For each concurrency C, N ``/v1/recommend`` requests (distinct patients'
two-step histories from the agent's cohort) are sent by C client threads: p50/p95/p99 latency,
requests/s, errors. Then the same decisions run in-process on the bare engine (the same ``AgentService``
procedure with an in-process world model, batches of C, no HTTP, no Serve): decisions/s.
``overhead_ratio`` = served requests/s (batching on) / bare decisions/s; ``batching_ratio`` = requests/s
with batching / without; ``vllm_over_transformers`` = served requests/s (batching on) of the two engines.
All in one run, so the ratios share the machine's state. Both sides use the same torch thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sys

import numpy as np

# this file is named like the `serve` package: keep its own folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def histories(agent_dir: str, n: int) -> list[list[dict]]:
    """n two-step histories of distinct patients (cohort test split when reachable, else the medians)."""
    from serve.agent_dir import load_agent_dir
    from sepsis_rl.cohort.store import read_split, table_features

    a = load_agent_dir(agent_dir)
    names = a.spec.feature_names
    try:
        import yaml

        cohort = yaml.safe_load((Path(agent_dir) / "agent.yaml").read_text())["cohort"]
        table = read_split(Path(agent_dir) / cohort, "test", a.spec)
        x, ep = table_features(table, a.spec), table.column("episode_id").to_numpy()
        starts = [i for i in range(1, len(ep)) if ep[i] == ep[i - 1]]
        rows = [(starts[j % len(starts)] - 1, starts[j % len(starts)]) for j in range(n)]
        return [[{k: float(x[r, i]) for i, k in enumerate(names)} for r in pair] for pair in rows]
    except Exception:
        return [[dict(zip(names, a.medians))] * 2 for _ in range(n)]


def body(history: list[dict]) -> str:
    return json.dumps({"patient": {"history": history, "last_action": {"fluid_bin": 1, "vaso_bin": 1}}})


def load(url: str, bodies: list[str], concurrency: int) -> dict:
    import requests

    session_lat: list[float] = []
    errors = 0

    def one(b: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        try:
            code = requests.post(url, data=b, headers={"Content-Type": "application/json"}, timeout=600).status_code
        except requests.RequestException:
            code = -1
        return time.perf_counter() - t0, code

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    for lat, code in results:
        session_lat.append(lat)
        errors += code != 200
    q = np.percentile(session_lat, [50, 95, 99])
    return {"requests": len(bodies), "errors": errors, "wall_s": round(wall, 3), "requests_per_s": round(len(bodies) / wall, 3),
            "p50_s": round(float(q[0]), 4), "p95_s": round(float(q[1]), 4), "p99_s": round(float(q[2]), 4)}


def bare(agent_dir: str, hists: list[list[dict]], concurrencies: list[int], engine: str) -> dict:
    """The same decisions in-process: AgentService + in-process world model on ``engine`` (one engine for
    every concurrency), batches of each concurrency."""
    from serve.agent_deployment import AgentService, DecisionInput
    from serve.agent_dir import load_agent_dir
    from serve.world_model_deployment import SimulationCall, WorldModelService

    a = load_agent_dir(agent_dir)
    wm = WorldModelService(agent_dir)
    svc = AgentService(a, engine, lambda h, c, k: wm.simulate_many([SimulationCall(h, c, k)])[0])
    names = a.spec.feature_names
    items = [DecisionInput(np.array([[s[n] for n in names] for s in h]), 6, a.settings.k, a.settings.horizon,
                           a.settings.temperature, True, None, []) for h in hists]
    out = {}
    for concurrency in concurrencies:
        svc.decide_many(items[:concurrency])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(items), concurrency):
            svc.decide_many(items[i:i + concurrency])
        wall = time.perf_counter() - t0
        out[f"c{concurrency}"] = {"decisions": len(items), "wall_s": round(wall, 3),
                                  "decisions_per_s": round(len(items) / wall, 3)}
    close = getattr(svc.engine, "close", None)
    if callable(close):
        close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("agent_dir")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the engine (served and bare)")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--engines", nargs="+", default=None, choices=["transformers", "vllm"],
                   help="default: both where vLLM is installed, else transformers")
    p.add_argument("--engine-cpus", type=float, default=1.0, help="CPUs the agent replica reserves")
    p.add_argument("--batch-wait-s", type=float, default=0.02, help="@serve.batch's wait for a fuller batch")
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the replicas
    import ray
    import torch
    from ray import serve

    from serve.app import AppArgs, build_app
    from sepsis_rl.rollout.engine_choice import vllm_installed

    engines = args.engines or (["transformers", "vllm"] if vllm_installed() else ["transformers"])
    torch.set_num_threads(args.threads)
    agent_dir = str(Path(args.agent_dir).resolve())
    hists = histories(agent_dir, args.requests)
    bodies = [body(h) for h in hists]
    port = free_port()
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    out: dict = {"benchmark": "serve", "agent_dir": agent_dir, "requests": args.requests, "threads": args.threads,
                 "max_batch_size": args.max_batch_size, "batch_wait_s": args.batch_wait_s,
                 "engine_cpus": args.engine_cpus, "engines": engines,
                 "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                 "served": {e: {} for e in engines}, "bare_engine": {}, "ratios": {e: {} for e in engines}}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        for engine in engines:
            for name, batching in (("on", True), ("off", False)):
                app = f"bench-{engine}-{name}"
                serve.run(build_app(AppArgs(agent_dir=agent_dir, engine=engine, engine_cpus=args.engine_cpus,
                                            batching=batching, max_batch_size=args.max_batch_size,
                                            batch_wait_timeout_s=args.batch_wait_s)),
                          name=app, route_prefix=f"/{app}")
                load(f"{base}/{app}/v1/recommend", bodies[:4], 4)  # warm-up
                for c in args.concurrency:
                    out["served"][engine][f"batching_{name}_c{c}"] = load(f"{base}/{app}/v1/recommend", bodies, c)
                serve.delete(app)
    finally:
        serve.shutdown()
        ray.shutdown()
    for engine in engines:
        out["bare_engine"][engine] = bare(agent_dir, hists, args.concurrency, engine)
        for c in args.concurrency:
            on, off = out["served"][engine][f"batching_on_c{c}"], out["served"][engine][f"batching_off_c{c}"]
            out["ratios"][engine][f"batching_ratio_c{c}"] = round(on["requests_per_s"] / off["requests_per_s"], 3)
            out["ratios"][engine][f"overhead_ratio_c{c}"] = round(
                on["requests_per_s"] / out["bare_engine"][engine][f"c{c}"]["decisions_per_s"], 3)
    if {"transformers", "vllm"} <= set(engines):
        out["vllm_over_transformers"] = {
            f"c{c}": round(out["served"]["vllm"][f"batching_on_c{c}"]["requests_per_s"]
                           / out["served"]["transformers"][f"batching_on_c{c}"]["requests_per_s"], 3)
            for c in args.concurrency}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
