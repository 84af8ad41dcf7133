"""Run folders: the storage layer on paths and URIs, relative paths, the exclusive lock, verified checkpoints."""

import json
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sepsis_rl import storage
from sepsis_rl.curriculum.checkpoints import CheckpointError, CheckpointStore
from sepsis_rl.curriculum.run_dir import RunDir
from sepsis_rl.curriculum.run_lock import RunLock, RunLockedError
from sepsis_rl.learner import state as learner_state

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- storage
def test_file_uri_goes_through_pyarrow_with_object_store_semantics(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPSIS_RL_CACHE", str(tmp_path / "cache"))
    root = f"file://{tmp_path}/bucket/run"
    assert storage.is_uri(root) and not storage.is_uri(str(tmp_path)) and not storage.is_uri("relative/x")
    storage.write_text(storage.join(root, "a", "b.txt"), "hello")
    assert storage.exists(storage.join(root, "a", "b.txt")) and storage.read_text(storage.join(root, "a", "b.txt")) == "hello"
    assert storage.list_dir(storage.join(root, "a")) == ["b.txt"] and storage.list_dir(storage.join(root, "none")) == []

    with storage.writing_dir(storage.join(root, "model")) as d:  # staged locally, uploaded on exit
        (d / "w.bin").write_bytes(b"\x00" * 10)
        (d / "sub").mkdir()
        (d / "sub" / "c.json").write_text("{}")
        assert not storage.exists(storage.join(root, "model"))  # nothing visible before the upload
    assert (tmp_path / "bucket" / "run" / "model" / "sub" / "c.json").read_text() == "{}"
    local = Path(storage.local_copy(storage.join(root, "model")))  # one download per node, into the cache
    assert local.is_relative_to(tmp_path / "cache") and (local / "w.bin").stat().st_size == 10
    assert storage.local_copy(storage.join(root, "model")) == str(local)
    storage.delete(storage.join(root, "model"))
    assert not storage.exists(storage.join(root, "model"))


def test_failed_write_leaves_nothing(tmp_path):
    for loc in (str(tmp_path / "local" / "m"), f"file://{tmp_path}/uri/m"):
        with pytest.raises(RuntimeError):
            with storage.writing_dir(loc) as d:
                (d / "half").write_text("x")
                raise RuntimeError("writer died")
        assert not storage.exists(loc)


def test_node_local_root_maps_paths_into_a_private_tree(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.NODE_ROOT_ENV, str(tmp_path / "nodeB"))
    storage.write_text("/shared/run/x.txt", "1")
    assert (tmp_path / "nodeB" / "shared" / "run" / "x.txt").read_text() == "1"


# ------------------------------------------------------------------------------- relative paths
@pytest.mark.parametrize("uri", [False, True])
def test_state_records_relative_paths_and_a_copied_run_uses_its_own_outputs(tmp_path, monkeypatch, uri):
    monkeypatch.setenv("SEPSIS_RL_CACHE", str(tmp_path / "cache"))
    src = f"file://{tmp_path}/a/run" if uri else str(tmp_path / "a" / "run")
    run = RunDir(src)
    (run.path("world_model")).mkdir(parents=True)
    (run.path("world_model") / "w").write_text("original")
    run.publish("world_model")
    run.complete("world_model", run.uri("world_model"), {"x": 1})
    run.complete("cohort", "/data/cohort", {})  # an input outside the run folder stays absolute
    state = json.loads((tmp_path / "a" / "run" / "state.json").read_text())
    assert state["stages"]["world_model"]["output"] == "world_model" and state["stages"]["cohort"]["output"] == "/data/cohort"

    shutil.copytree(tmp_path / "a" / "run", tmp_path / "b" / "run")
    (tmp_path / "b" / "run" / "world_model" / "w").write_text("copy")
    shutil.rmtree(tmp_path / "a")  # the original is gone: the copy must not need it
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
    copy = RunDir(f"file://{tmp_path}/b/run" if uri else str(tmp_path / "b" / "run"))
    assert copy.done("world_model") and Path(copy.local("world_model"), "w").read_text() == "copy"


# ----------------------------------------------------------------------------------------- lock
def _holder(run: Path, ready: Path) -> subprocess.Popen:
    code = ("import sys, time; from pathlib import Path; from sepsis_rl.curriculum.run_lock import RunLock\n"
            f"l = RunLock(Path({str(run)!r}), {str(run)!r}).acquire(); Path({str(ready)!r}).write_text('1'); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 30
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert ready.exists()
    return p


def test_second_run_is_refused_while_the_first_lives_and_a_dead_holder_is_taken_over(tmp_path, caplog):
    run = tmp_path / "run"
    p = _holder(run, tmp_path / "ready")
    try:
        with pytest.raises(RunLockedError, match=rf"in use by another run \(PID {p.pid} on host {socket.gethostname()}\)"):
            RunLock(run, str(run)).acquire()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert str(p.pid) in (run / ".lock").read_text()  # the dead holder's record is still there: a stale lock
    with caplog.at_level(logging.WARNING):
        with RunLock(run, str(run)):
            assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    assert f"taking over the lock of a run that is gone (PID {p.pid}" in caplog.text
    assert (run / ".lock").read_text() == ""  # released cleanly: the next run starts without a warning


def test_second_pipeline_on_the_same_folder_exits_2_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "sepsis_rl.cli", "pipeline", "--preset", "tiny", "--out", str(run), "--no-dashboard"]
    first = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not ((run / ".lock").is_file() and (run / ".lock").read_text()):  # the first run holds the folder
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.2)
        for extra in ([], ["--resume"]):
            r = subprocess.run(base + extra, capture_output=True, text=True, timeout=120, env=env)
            assert r.returncode == 2 and f"(PID {first.pid} on host {socket.gethostname()})" in r.stderr, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert first.poll() is None  # the first run was not disturbed
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


# ---------------------------------------------------------------------------------- checkpoints
def _writer(tensors):
    def write(loc):
        data = learner_state.dumps({"kind": "torch", "w": tensors, "rng": learner_state.rng_state(), "updates": 3})
        storage.write_bytes(storage.join(loc, "rank0.pt"), data)
        import hashlib

        return [{"file": "rank0.pt", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    return write


def _restore(into):
    def restore(loc):
        into.append(learner_state.loads(storage.read_bytes(storage.join(loc, "rank0.pt"))))
    return restore


@pytest.mark.parametrize("uri", [False, True])
def test_last_k_kept_and_a_truncated_newest_falls_back_with_a_warning(tmp_path, caplog, uri):
    root = f"file://{tmp_path}/ck" if uri else str(tmp_path / "ck")
    store = CheckpointStore(root, keep=2)
    for it in (1, 2, 3):
        store.save(it, _writer(torch.full((4,), float(it))), {"iteration": it, "history": [it]})
    assert [i for i, _ in store.list()] == [3, 2]  # the last K only
    assert store.verify(store.list()[0][1])["iteration"] == 3
    rank0 = tmp_path / "ck" / "iter-000003" / "rank0.pt"
    rank0.write_bytes(rank0.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        store.verify(store.list()[0][1])
    got: list = []
    with caplog.at_level(logging.WARNING):
        where, client = store.resume(_restore(got))
    assert client["iteration"] == 2 and where.endswith("iter-000002") and float(got[0]["w"][0]) == 2.0
    assert "iter-000003 is unusable" in caplog.text and "falling back" in caplog.text
    (tmp_path / "ck" / "iter-000002" / "manifest.json").unlink()  # incomplete: never committed
    assert store.resume(_restore([])) is None


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = ""


def test_a_tampered_pickle_is_refused_and_never_run(tmp_path, caplog):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    store = CheckpointStore(str(tmp_path / "ck"), keep=2)
    store.save(1, _writer(torch.ones(2)), {"iteration": 1, "history": []})
    evil = pickle.dumps({"kind": "torch", "x": _Payload()})
    buf = tmp_path / "evil.pt"
    torch.save({"kind": "torch", "x": _Payload()}, buf)  # a torch file whose pickle calls os.system

    def tampered(loc):
        data = buf.read_bytes()
        storage.write_bytes(storage.join(loc, "rank0.pt"), data)
        import hashlib

        return [{"file": "rank0.pt", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    store.save(2, tampered, {"iteration": 2, "history": []})  # manifest consistent with the tampered file
    assert not Path(MARKER).exists()
    with pytest.raises(pickle.UnpicklingError):
        learner_state.loads(evil)
    with caplog.at_level(logging.WARNING):
        where, client = store.resume(_restore([]))
    assert client["iteration"] == 1 and "iter-000002 is unusable" in caplog.text
    assert not Path(MARKER).exists()  # the payload never ran


def test_rng_state_round_trips_through_the_safe_loader():
    import random

    import numpy as np

    s = learner_state.loads(learner_state.dumps(learner_state.rng_state()))
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    learner_state.set_rng_state(s)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_local_copy_of_a_missing_uri_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPSIS_RL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="nothing-here does not exist"):
        storage.local_copy(f"file://{tmp_path}/nothing-here")
