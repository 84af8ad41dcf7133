"""``cluster/aws.yaml`` and ``cluster/gcp.yaml`` against the ``ray-schema.json`` in the Ray wheel and the launcher
rules ``ray up`` would only hit on the cloud; each rule rejects a broken copy naming the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from sepsis_rl.deploy import launcher
from sepsis_rl.deploy.manifests import Pins

ROOT = Path(__file__).resolve().parents[1]
PINS = Pins.from_pyproject(ROOT / "pyproject.toml")
CONFIGS = {name: yaml.safe_load((ROOT / "cluster" / f"{name}.yaml").read_text()) for name in ("aws", "gcp")}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_launcher_config_passes(name):
    cfg = CONFIGS[name]
    assert cfg["provider"]["type"] == name
    assert launcher.check(cfg, PINS) == []


def test_runtime_env_is_a_valid_ray_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)
    assert set(env) == {"excludes", "env_vars"}  # sepsis-rl submit adds working_dir and the run id


def _one_gpu_worker(c):
    c["available_node_types"]["gpu_4x"]["max_workers"] = 1


NEGATIVE = [  # (mutation, words in one message; the message starts with the field)
    (lambda c: c.update(max_worker=3), "<root>: Additional properties are not allowed ('max_worker' was unexpected)"),
    (lambda c: c["available_node_types"]["gpu_4x"].update(resources={"GPU": 4.5}), "available_node_types.gpu_4x.resources.GPU"),
    (lambda c: c.update(head_node_type="head_node"), "head_node_type: 'head_node' is not in available_node_types"),
    (lambda c: c["available_node_types"]["cpu_spot"].update(min_workers=5), "available_node_types.cpu_spot.min_workers: 5 > max_workers 4"),
    (lambda c: c["docker"].update(image="rayproject/ray:2.59.0-py311-gpu"), "docker.image: 'rayproject/ray:2.59.0-py311-gpu'"),
    (lambda c: c.update(setup_commands=[]), "setup_commands: no 'pip install' of /home/ray/sepsis-rl"),
    (lambda c: c["file_mounts"].pop("/home/ray/.ray/auth_token"), "file_mounts: ~/.ray/auth_token"),
    (lambda c: c.update(worker_start_ray_commands=["ray start --address=$RAY_HEAD_IP:6379"]),
     "worker_start_ray_commands[0]: 'ray start' without RAY_AUTH_MODE=token"),
    (_one_gpu_worker, "the gpu preset's bundles (12 bundles, 8 GPUs) do not fit the nodes at max_workers (4 GPUs)"),
    (lambda c: c["available_node_types"]["gpu_4x"].update(max_workers=3), "4 of 12 GPUs would sit idle"),
    (lambda c: c["available_node_types"]["head"].update(resources={"CPU": 0, "GPU": 1}),
     "available_node_types.head.resources.GPU: the head needs no GPU"),
]


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("mutate, words", NEGATIVE, ids=[w.split(":")[0][:40] for _, w in NEGATIVE])
def test_broken_launcher_config_rejected(name, mutate, words):
    cfg = copy.deepcopy(CONFIGS[name])
    mutate(cfg)
    problems = launcher.check(cfg, PINS)
    assert any(words in p for p in problems), problems
