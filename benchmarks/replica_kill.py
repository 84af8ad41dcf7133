"""Replica-death benchmark: does a client lose a request when an agent replica's process dies under load? JSON.

    python benchmarks/replica_kill.py AGENT_DIR [--runs 3] [--requests 32] [--concurrency 8] [--kill-after 20]

Starts a local Ray instance and Serve with 2 agent replicas (transformers engine by default, so both fit on
a small machine). Each run sends ``--requests`` ``/v1/recommend`` requests (distinct patients' histories,
seeded) from ``--concurrency`` client threads; ``--kill-after`` seconds in, one agent replica's worker
process is sent SIGKILL (not a Ray-level stop: the process dies as on an OOM kill or a lost node). Reports
per run: status codes, failures, how many requests were in flight at the kill, and whether Serve replaced
the replica (2 running replicas again). The ingress retries a request on another replica when its replica
died, so the expected result is every request answered 200.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# this file sits beside benchmarks/serve.py, named like the `serve` package: keep its folder off the path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

APP = "killtest"


def serve_benchmark():  # type: ignore[no-untyped-def]
    """benchmarks/serve.py as a module (its request bodies and patient histories), loaded by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_benchmark", Path(__file__).with_name("serve.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def agent_replicas() -> list[dict]:
    import ray

    return [a for a in ray.util.list_named_actors(all_namespaces=True)
            if APP in a["name"] and "AgentDeployment" in a["name"]]


def replica_pid(actor: dict) -> int:
    import ray

    handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
    return int(ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=60))


def running_replicas() -> int:
    from ray import serve

    status = serve.status().applications[APP].deployments
    agent = next(d for name, d in status.items() if "Agent" in name)
    return int(agent.replica_states.get("RUNNING", 0))


def one_run(url: str, bodies: list[str], concurrency: int, kill_after: float) -> dict:
    import requests

    codes: list[int] = []
    in_flight = [0]
    lock = threading.Lock()

    def post(b: str) -> int:
        with lock:
            in_flight[0] += 1
        try:
            return requests.post(url, data=b, headers={"Content-Type": "application/json"}, timeout=600).status_code
        except requests.RequestException:
            return -1
        finally:
            with lock:
                in_flight[0] -= 1

    killed: dict = {}

    def killer() -> None:
        time.sleep(kill_after)
        victim = agent_replicas()[0]
        pid = replica_pid(victim)
        with lock:
            killed.update(replica=victim["name"], pid=pid, in_flight=in_flight[0], answered=len(codes))
        os.kill(pid, signal.SIGKILL)

    t0 = time.perf_counter()
    k = threading.Thread(target=killer)
    k.start()
    with ThreadPoolExecutor(concurrency) as pool:
        for code in pool.map(post, bodies):
            codes.append(code)
    k.join()
    wall = time.perf_counter() - t0
    deadline, replaced = time.time() + 180, False
    while time.time() < deadline:
        if running_replicas() >= 2 and all(a["name"] != killed["replica"] for a in agent_replicas()):
            replaced = True
            break
        time.sleep(2)
    return {"requests": len(codes), "ok": sum(c == 200 for c in codes), "failed": sum(c != 200 for c in codes),
            "codes": sorted(set(codes)), "wall_s": round(wall, 1), "killed": killed,
            "replica_replaced": replaced, "replaced_after_s": round(time.perf_counter() - t0 - wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("agent_dir")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--kill-after", type=float, default=20.0)
    p.add_argument("--engine", default="transformers", choices=["auto", "transformers", "vllm"])
    p.add_argument("--engine-cpus", type=float, default=0.5)
    p.add_argument("--num-cpus", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray
    from ray import serve

    from serve.app import AppArgs, build_app

    bench = serve_benchmark()
    body, free_port, histories = bench.body, bench.free_port, bench.histories

    agent_dir = str(Path(args.agent_dir).resolve())
    bodies = [body(h) for h in histories(agent_dir, args.requests)]
    port = free_port()
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    out: dict = {"benchmark": "replica_kill", "agent_dir": agent_dir, "engine": args.engine,
                 "requests": args.requests, "concurrency": args.concurrency, "kill_after_s": args.kill_after, "runs": []}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(AppArgs(agent_dir=agent_dir, engine=args.engine, engine_cpus=args.engine_cpus,
                                    replicas=2)), name=APP, route_prefix=f"/{APP}")
        url = f"http://127.0.0.1:{port}/{APP}/v1/recommend"
        for i in range(args.runs):
            run = one_run(url, bodies, args.concurrency, args.kill_after)
            print(f"run {i + 1}: {run['ok']}/{run['requests']} answered 200, replica replaced: "
                  f"{run['replica_replaced']}", file=sys.stderr)
            out["runs"].append(run)
    finally:
        serve.shutdown()
        ray.shutdown()
    out["all_answered"] = all(r["failed"] == 0 for r in out["runs"])
    out["all_replaced"] = all(r["replica_replaced"] for r in out["runs"])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
