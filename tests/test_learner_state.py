"""A learner's saved state (weights_only tensors, no DeepSpeed pickle) resumes training exactly, ZeRO 0, 1 and 3."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.parametrize("stage", [0, 1, 3])
def test_restored_engine_takes_the_same_next_step(stage):
    r = subprocess.run([sys.executable, str(REPO / "tests" / "learner_state_roundtrip.py"), str(stage), _free_port()],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and "MATCH" in r.stdout, (r.stdout + r.stderr)[-3000:]
