"""World-model checkpoints: a folder with ``model.safetensors`` (weights) and ``config.json``.

``config.json`` holds everything else needed to rebuild the model: the architecture, the feature
layout, the normalisation stats and the cohort's feature spec (so a consumer can check it is feeding
the right features in the right units), plus free-form training info. Loading reads only JSON and
safetensors, never pickle, so a checkpoint from an untrusted source cannot execute code. Folders are
written to a temporary sibling and renamed into place, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sepsis_rl.checkpoint import atomic_dir
from sepsis_rl.cohort.spec import CohortSpec
from sepsis_rl.cohort.validation import CohortInputError
from world_model.learned_reward import LearnedReward
from world_model.model import WorldModel
from world_model.network import DynamicsEnsemble, ModelConfig
from world_model.normalize import FeatureLayout, Normalizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "sepsis-rl-world-model"
FORMAT_VERSION = 1


class CheckpointError(CohortInputError):
    """A folder that is not a readable world-model checkpoint (a user error: the CLI exits with 2)."""


def save_world_model(model: WorldModel, out_dir: str | os.PathLike, info: dict[str, Any] | None = None,
                     overwrite: bool = False) -> Path:
    """Write ``model`` to ``out_dir`` atomically; ``info`` (JSON-able) is stored under ``"info"``."""
    out = Path(out_dir)
    with atomic_dir(out, overwrite) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        config = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": asdict(model.config),
            "layout": {k: list(v) for k, v in asdict(model.layout).items()},
            "normalizer": model.normalizer.to_dict(),
            "spec": model.spec.to_dict() if model.spec is not None else None,
            "learned_reward": model.learned_reward.to_dict() if model.learned_reward is not None else None,
            "info": info or {},
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return out


def read_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_FILE
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: not a world-model checkpoint (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: unreadable JSON: {e}") from e
    if config.get("format") != FORMAT or config.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} checkpoint")
    return config


def load_world_model(model_dir: str | os.PathLike) -> WorldModel:
    """Rebuild a WorldModel from a checkpoint folder (JSON + safetensors only)."""
    config = read_config(model_dir)
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{model_dir}: missing {WEIGHTS_FILE}")
    try:
        model_cfg = ModelConfig(**config["model"])
        layout = FeatureLayout(**{k: tuple(v) for k, v in config["layout"].items()})
        norm = Normalizer.from_dict(config["normalizer"])
        spec = CohortSpec.from_dict(config["spec"]) if config.get("spec") else None
        learned = LearnedReward.from_dict(config["learned_reward"]) if config.get("learned_reward") else None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{model_dir}: invalid {CONFIG_FILE}: {e}") from e
    _check_normalizer(norm, layout, Path(model_dir) / CONFIG_FILE)
    try:
        net = DynamicsEnsemble(model_cfg, layout)
        tensors = load_file(str(weights))
        net.load_state_dict(tensors, strict=True)
    except (RuntimeError, OSError, SafetensorError, ValueError) as e:
        msg = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{weights}: unreadable weights or weights that do not match the config: {msg}") from e
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise CheckpointError(f"{weights}: tensor {name!r} has NaN or infinite values (a diverged or corrupted model)")
    model = WorldModel(net, model_cfg, layout, norm, spec)
    model.learned_reward = learned
    return model


def _check_normalizer(norm: Normalizer, layout: FeatureLayout, where: Path) -> None:
    """Every statistic has one entry per feature (or per dynamic feature), finite, with positive scales."""
    import math

    n, n_dyn = layout.n_features, len(layout.dynamic)
    sizes = {"log": n, "mean": n, "std": n, "raw_mean": n, "raw_std": n, "delta_mean": n_dyn, "delta_std": n_dyn}
    for key, size in sizes.items():
        values = getattr(norm, key)
        if len(values) != size:
            raise CheckpointError(f"{where}: normalizer.{key} has {len(values)} entries, the layout needs {size}")
        if key != "log" and not all(math.isfinite(v) for v in values):
            raise CheckpointError(f"{where}: normalizer.{key} has NaN or infinite values")
        if key.endswith("std") and min(values, default=1.0) <= 0:
            raise CheckpointError(f"{where}: normalizer.{key} has a non-positive scale")
