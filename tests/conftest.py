"""Shared fixtures: the default model's tokenizer (fetched once per machine) and a tiny random model."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    from sepsis_rl.models import resolve_base_model

    return resolve_base_model("default")


@pytest.fixture(scope="session")
def tiny_model_dir(default_model_dir, tmp_path_factory) -> str:
    from sepsis_rl.models import build_tiny_model

    return str(build_tiny_model(default_model_dir, tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A 300-patient synthetic cohort and a tiny world model trained on it in seconds: (cohort_dir, model)."""
    from sepsis_rl.cohort.synth import synthesize_cohort
    from world_model.presets import get_preset
    from world_model.train import train_world_model

    root = tmp_path_factory.mktemp("world")
    cohort = synthesize_cohort(root / "cohort", 300, seed=0, progress=False)
    return str(cohort), train_world_model(cohort, get_preset("tiny")).model
