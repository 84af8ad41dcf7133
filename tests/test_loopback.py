"""A local Ray started by the project listens on loopback only (GCS, raylet, workers, agents, dashboard)."""

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, logging, os, time, psutil, ray
logging.basicConfig(level=logging.INFO)
from sepsis_rl.ray_start import start_ray
assert start_ray(2, dashboard=True)
@ray.remote
class A:
    def pid(self): return os.getpid()
a = A.remote()
assert ray.get(a.pid.remote(), timeout=120)
assert ray.get(ray.remote(lambda: 1).remote(), timeout=120) == 1
time.sleep(2)
procs = [psutil.Process()] + psutil.Process().children(recursive=True)  # every Ray process of this session
out = []
for p in procs:
    try:
        out += [[p.pid, p.name(), c.laddr.ip, c.laddr.port] for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    except psutil.NoSuchProcess:
        pass
print("LISTEN", json.dumps({"names": sorted({p.name() for p in procs if p.is_running()}), "sockets": out}))
ray.shutdown()
"""


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return addr.is_loopback or (addr.version == 6 and addr.ipv4_mapped is not None and addr.ipv4_mapped.is_loopback)


def test_local_ray_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("LISTEN "))[7:])
    sockets = data["sockets"]
    names = " ".join(data["names"])
    assert "gcs_server" in names and "raylet" in names  # the whole local cluster was inspected
    assert len(sockets) >= 5, sockets  # GCS, raylet, object manager, workers, dashboard (and agents)
    assert [s for s in sockets if not _loopback(s[2])] == []
    assert "bound to 127.0.0.1 only" in r.stderr  # and the log says so
