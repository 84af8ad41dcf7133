"""What the service reads from an ``agent/`` folder (the pipeline's export), checked before anything starts.

The folder is self-contained: ``agent.yaml`` names the policy model and the world model by paths relative
to it (absolute paths are accepted for older exports). The feature spec comes from the world model's own
checkpoint, so the served schema is exactly what the world model was trained on. Imputation medians come
from ``feature_medians.json`` in the folder when present, else from the cohort's training split when the
cohort named by ``agent.yaml`` is reachable, else from the world model's training means (said so in
``/v1/schema``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sepsis_rl.agent.fallback import Fallback
from sepsis_rl.agent.prompts import check_style
from sepsis_rl.cohort.spec import CohortSpec
from sepsis_rl.cohort.validation import CohortInputError

AGENT_FILE = "agent.yaml"
MEDIANS_FILE = "feature_medians.json"


class AgentDirError(CohortInputError):
    """An agent folder that cannot be served (the CLI prints it on one line and exits with 2)."""


@dataclass(frozen=True)
class AgentSettings:
    """The decision procedure the agent was trained with (agent.yaml ``agent``)."""

    k: int = 3
    horizon: int = 4
    temperature: float = 0.0
    prompt_style: str = "verbose"  # agents exported before styles were recorded read the verbose prompt
    fallback: str = "repeat_last"  # ... and fell back to the running prescription


@dataclass(frozen=True)
class AgentDir:
    root: Path
    model_path: Path
    world_model_path: Path
    spec: CohortSpec
    settings: AgentSettings
    medians: tuple[float, ...]
    medians_source: str  # "feature_medians.json" | "cohort train split" | "world-model training mean"
    window: int
    run_id: str

    @property
    def agent_name(self) -> str:
        return f"sepsis-rl-agent/{self.run_id}"

    @property
    def world_model_name(self) -> str:
        return f"sepsis-rl-world-model/{self.run_id}"


def _resolve(root: Path, value: Any, field: str) -> Path:
    if not isinstance(value, str) or not value:
        raise AgentDirError(f"{root / AGENT_FILE}: field {field!r} must be a path, got {value!r}")
    path = Path(value)
    return path if path.is_absolute() else root / path


def _cohort_medians(cohort: Path, spec: CohortSpec) -> np.ndarray | None:
    from sepsis_rl.cohort.store import read_split, table_features

    try:
        table = read_split(cohort, "train", spec)
    except Exception:  # unreachable or unreadable cohort: the next source is used, nothing fails
        return None
    return np.nanmedian(table_features(table, spec), axis=0)


def load_agent_dir(path: str | Path) -> AgentDir:
    """Read and check ``path``; raises :class:`AgentDirError` naming the missing file or bad field."""
    from world_model.checkpoint import read_config

    root = Path(path).resolve()
    if not root.is_dir():
        raise AgentDirError(f"agent folder {path} does not exist")
    meta_file = root / AGENT_FILE
    if not meta_file.is_file():
        raise AgentDirError(f"{path}: not an agent folder (no {AGENT_FILE}; the pipeline's final stage writes RUN/agent/)")
    try:
        meta = yaml.safe_load(meta_file.read_text()) or {}
    except yaml.YAMLError as e:
        raise AgentDirError(f"{meta_file}: unreadable YAML: {e}") from e
    model = _resolve(root, meta.get("model", "model"), "model")
    world = _resolve(root, meta.get("world_model", "world_model"), "world_model")
    if not (model / "config.json").is_file():
        raise AgentDirError(f"{meta_file}: policy model folder {model} is missing or has no config.json")
    try:
        wm_config = read_config(world)
    except (FileNotFoundError, CohortInputError) as e:
        raise AgentDirError(f"{meta_file}: world model: {e}") from e
    if not wm_config.get("spec"):
        raise AgentDirError(f"{world}: the world-model checkpoint has no feature spec")
    spec = CohortSpec.from_dict(wm_config["spec"])
    a = meta.get("agent") or {}
    try:
        settings = AgentSettings(int(a.get("k", 3)), int(a.get("horizon", 4)), float(a.get("temperature", 0.0)),
                                 check_style(str(a.get("prompt_style", "verbose"))),
                                 Fallback(str(a.get("fallback", "repeat_last"))).value)
    except (TypeError, ValueError) as e:
        raise AgentDirError(f"{meta_file}: field 'agent': {e}") from e
    medians, source = _medians(root, meta, spec, wm_config)
    run_id = str(meta.get("run_id") or (meta.get("config") or {}).get("run_id") or "local")
    return AgentDir(root, model, world, spec, settings, tuple(float(m) for m in medians), source,
                    int(wm_config["model"]["window"]), run_id)


def _medians(root: Path, meta: dict, spec: CohortSpec, wm_config: dict) -> tuple[np.ndarray, str]:
    names = spec.feature_names
    file = _resolve(root, meta.get("feature_medians", MEDIANS_FILE), "feature_medians")
    if file.is_file():
        data = json.loads(file.read_text())
        missing = [n for n in names if n not in data]
        if missing:
            raise AgentDirError(f"{file}: no median for feature {missing[0]!r}")
        return np.array([float(data[n]) for n in names]), file.name
    if meta.get("cohort"):
        med = _cohort_medians(_resolve(root, meta["cohort"], "cohort"), spec)
        if med is not None and np.isfinite(med).all():
            return med, "cohort train split"
    return np.asarray(wm_config["normalizer"]["raw_mean"], dtype=np.float64), "world-model training mean"
