"""Which policies ``sepsis-rl evaluate`` knows, and how each is built from a run folder or a cohort.

Non-LLM policies need only the cohort (planners also a world model; the oracle a ground truth). LLM
policies need a run folder: ``agent`` (the final agent/), ``agent_no_sim`` (same model, no tool),
``base_llm`` / ``base_llm_wm`` (the untrained base model without / with the world model) and the stage
checkpoints ``after_sft`` / ``after_bc`` (with the tool), the curriculum's ablation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sepsis_rl.cohort.validation import CohortInputError

COHORT_POLICIES = ("clinician", "random", "no_treatment", "guideline", "wd3qne", "cql", "bcq", "bc", "marwil")
MODEL_POLICIES = ("wm_planner", "wm_planner_k3", "wm_planner_gl3", "oracle_planner", "oracle_planner_k3")
LLM_POLICIES = ("agent", "agent_no_sim", "base_llm", "base_llm_wm", "after_sft", "after_bc")
STAGE_POLICIES = ("base_llm", "base_llm_wm", "after_sft", "after_bc")  # the curriculum's stages before RL
ALL_POLICIES = COHORT_POLICIES + MODEL_POLICIES + LLM_POLICIES
DEFAULT_POLICIES = ("clinician", "random", "no_treatment", "guideline", "wm_planner", "wm_planner_k3", "wd3qne", "cql",
                    "bc", "agent", "agent_no_sim", "base_llm_wm")
BASELINE_NAMES = ("guideline", "wd3qne", "cql", "bcq", "bc", "marwil")


@dataclass
class Sources:
    """Where the evaluated things live (paths resolved once, in the driver)."""

    cohort: str
    world_model: str | None = None
    run_dir: str | None = None
    agent_model: str | None = None
    sft_model: str | None = None
    bc_model: str | None = None
    base_model: str | None = None
    agent_cfg: dict[str, Any] = field(default_factory=lambda: {"k": 3, "horizon": 3})

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "Sources":
        run = Path(run_dir)
        agent = run / "agent"
        if not (agent / "agent.yaml").is_file():
            raise CohortInputError(f"{run}: no agent/agent.yaml (is this a finished pipeline run folder?)")
        spec = yaml.safe_load((agent / "agent.yaml").read_text())
        cohort = _resolve(spec.get("cohort") or _state_output(run, "cohort"), agent, run / "cohort")
        config = spec.get("config", {})
        return cls(cohort=str(cohort), world_model=str(_resolve(spec.get("world_model"), agent, agent / "world_model")),
                   run_dir=str(run), agent_model=str(_resolve(spec.get("model"), agent, agent / "model")),
                   sft_model=_existing(run / "sft" / "model"), bc_model=_existing(run / "bc" / "model"),
                   base_model=config.get("base_model", "default"), agent_cfg=dict(spec.get("agent", {})))


def _resolve(value: Any, base: Path, fallback: Path) -> Path:
    """A path from agent.yaml: relative to agent/ (self-contained), absolute, or the run's default."""
    if value:
        p = Path(value)
        p = p if p.is_absolute() else base / p
        if p.exists():
            return p
    if fallback.exists():
        return fallback
    raise CohortInputError(f"{base}: agent.yaml points to {value!r}, which does not exist, and {fallback} is missing")


def _state_output(run: Path, stage: str) -> str | None:
    """A stage's output recorded in the run's state.json (relative to the run folder, or absolute)."""
    import json

    try:
        out = json.loads((run / "state.json").read_text())["stages"][stage]["output"]
    except (OSError, ValueError, KeyError):
        return None
    return out if Path(out).is_absolute() else str(run / out)


def _existing(p: Path) -> str | None:
    return str(p) if p.exists() else None


def check_names(names: list[str], sources: Sources, has_truth: bool) -> None:
    """One clear error for an unknown policy or one that cannot be built from what was given."""
    for n in names:
        if n not in ALL_POLICIES:
            raise CohortInputError(f"unknown policy {n!r}; known: {', '.join(ALL_POLICIES)}")
        if n in LLM_POLICIES and sources.run_dir is None:
            raise CohortInputError(f"policy {n!r} needs a run folder (sepsis-rl evaluate RUN_DIR), not --cohort alone")
        if n.startswith("wm_planner") and sources.world_model is None:
            raise CohortInputError(f"policy {n!r} needs a world model: pass a run folder or --world-model")
        if n.startswith("oracle") and not has_truth:
            raise CohortInputError(f"policy {n!r} needs a ground-truth simulator (synthetic cohorts only)")
        if n == "after_sft" and sources.sft_model is None or n == "after_bc" and sources.bc_model is None:
            raise CohortInputError(f"policy {n!r}: the run folder has no {n.split('_')[1]}/model")
