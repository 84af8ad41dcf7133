"""``sepsis-rl submit``: entrypoint checks and runtime env without a cluster, then a real job on a local
``ray start --head`` (token auth on, private ports and temp dir) through the same CLI code path, waited to SUCCEEDED.

The job is the pipeline's first stage (``cohort synth``) and a ``cohort describe`` of its output, not the whole tiny
pipeline (minutes on 2 cores): the submission path (upload, runtime env, token, entrypoint, wait) is the same.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sepsis_rl.cli import main
from sepsis_rl.deploy.submit import (
    SubmitError, SubmitRequest, check_entrypoint, default_entrypoint, entrypoint_commands, job_url, load_runtime_env,
)

ROOT = Path(__file__).resolve().parents[1]


def test_default_entrypoint_is_the_gpu_pipeline_and_parses():
    ep = default_entrypoint("gpu", "s3://bucket/runs/r1")
    assert ep == "sepsis-rl pipeline --preset gpu --out s3://bucket/runs/r1"
    (args,) = check_entrypoint(ep)
    assert (args.command, args.preset, args.out) == ("pipeline", "gpu", "s3://bucket/runs/r1")


def test_entrypoint_split_on_shell_separators():
    assert entrypoint_commands("sepsis-rl a --x 'b c' && sepsis-rl d; sepsis-rl e") == [
        ["sepsis-rl", "a", "--x", "b c"], ["sepsis-rl", "d"], ["sepsis-rl", "e"]]


@pytest.mark.parametrize("entrypoint, needle", [
    ("sepsis-rl pipeline --preset huge --out /x", "invalid choice: 'huge'"),
    ("sepsis-rl pipeline --preset gpu", "--out"),
    ("sepsis-rl pipeline --preset gpu --out /x --bogus 1", "unrecognized arguments: --bogus"),
    ("python train.py", "is not a sepsis-rl command"),
    ("", "empty"),
])
def test_bad_entrypoints_rejected(entrypoint, needle):
    with pytest.raises(SubmitError, match="entrypoint") as e:
        check_entrypoint(entrypoint)
    assert needle in str(e.value)


def test_runtime_env_gets_working_dir_and_run_id(tmp_path):
    from ray.runtime_env import RuntimeEnv

    req = SubmitRequest("http://h:8265", "sepsis-rl pipeline --preset tiny --out /x", ROOT,
                        ROOT / "cluster" / "runtime_env.yaml", "run-7", extra_env={"A": "1"})
    env = load_runtime_env(req)
    RuntimeEnv(**env)  # Ray's own validation of the fields
    assert env["working_dir"] == str(ROOT)
    assert env["env_vars"]["SEPSIS_RL_RUN_ID"] == "run-7" and env["env_vars"]["A"] == "1"
    assert ".venv/" in env["excludes"] and ".git/" in env["excludes"]
    assert job_url("127.0.0.1:8265", "run-7") == "http://127.0.0.1:8265/#/jobs/run-7"


def test_cli_refuses_before_contacting_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # set here, so nothing process-wide changes (restored after)
    rc = main(["submit", "--address", "http://127.0.0.1:9", "--entrypoint", "sepsis-rl pipeline --out /x --bogus",
               "--working-dir", str(ROOT), "--runtime-env", str(ROOT / "cluster" / "runtime_env.yaml")])
    assert rc == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    rc = main(["submit", "--address", "http://127.0.0.1:9", "--preset", "tiny", "--out", "/x",
               "--working-dir", str(ROOT), "--runtime-env", str(ROOT / "cluster" / "runtime_env.yaml")])
    assert rc == 2 and "RAY_AUTH_MODE=token but no token" in capsys.readouterr().err


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_dashboard(url: str, token: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    req = urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise TimeoutError(f"dashboard at {url} not up after {timeout_s}s")


@pytest.fixture
def local_head():
    """A private single-node Ray cluster with token auth; only this fixture's processes are stopped."""
    token = secrets.token_hex(32)
    temp_dir = tempfile.mkdtemp(prefix="srlsub")
    gcs, dash, client, agent, agent_grpc, metrics, rt_env = _free_ports(7)
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(Path(venv_bin) / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "0",
           "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(rt_env), "--temp-dir", temp_dir,
           "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        _wait_dashboard(url, token, proc, 90)
        yield url, token
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its own cluster on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group this fixture started
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)


# Run in a child process: the client's token mode and token are process-wide in Ray (cached by its C++ loader),
# so they must not leak into the rest of the test session. The child calls the CLI's main() twice.
_CHILD = """
import sys
from sepsis_rl.cli import main
args = sys.argv[1:]
print("RC1", main(args + ["--wait", "--timeout", "150"]), flush=True)
print("RC2", main(args), flush=True)  # the same run id again
"""


@pytest.mark.slow
def test_submit_runs_a_job_on_a_local_cluster(local_head, tmp_path):
    url, token = local_head
    out = tmp_path / "run"
    entrypoint = f"sepsis-rl cohort synth --patients 120 --seed 0 --out {out}/cohort && sepsis-rl cohort describe {out}/cohort"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_AUTH_TOKEN": token, "PYTHONPATH": str(ROOT)}  # RAY_AUTH_MODE unset: submit turns token mode on
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, "submit", "--address", url, "--entrypoint", entrypoint,
         "--working-dir", str(ROOT), "--runtime-env", str(ROOT / "cluster" / "runtime_env.yaml"),
         "--run-id", "test-submit-1"],
        env=env, capture_output=True, text=True, timeout=200, cwd=ROOT,
    )
    assert "RC1 0" in res.stdout, res.stdout + res.stderr
    assert "submitted job test-submit-1" in res.stdout
    assert f"dashboard: {url}/#/jobs/test-submit-1" in res.stdout
    assert "job test-submit-1: SUCCEEDED" in res.stdout
    assert (out / "cohort" / "cohort.json").is_file()
    assert "RC2 2" in res.stdout and "sepsis-rl: error: the cluster refused the job: " in res.stderr, res.stderr
    print(f"submit -> SUCCEEDED in {time.monotonic() - t0:.1f}s")
