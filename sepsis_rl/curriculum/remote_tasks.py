"""The pipeline's heavy work that is neither a learner nor a rollout: resourced Ray tasks, never the driver.

On a GPU cluster the driver runs on the head node, which has no GPU and little memory to spare, so
world-model training and the BC stage's trace generation and held-out evaluation run as Ray tasks with
their own resource requests. Every task reads and writes through the storage layer (locations, not the
driver's paths): it may run on any node.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import ray

from sepsis_rl import storage
from sepsis_rl.curriculum.config import PipelineConfig

WM_KEEP = ("state_mae", "persistence_mae", "vent_auroc", "outcome_auroc", "outcome_auprc")


def _train_world_model(cohort: str, preset: str, out: str) -> dict[str, Any]:
    from world_model.checkpoint import save_world_model
    from world_model.evaluate import EvalConfig, evaluate_world_model
    from world_model.presets import get_preset
    from world_model.train import train_world_model

    local = storage.local_copy(cohort)
    result = train_world_model(local, get_preset(preset))
    metrics = evaluate_world_model(result.model, local, EvalConfig(counterfactual=False))
    info = {"train": result.summary(), "metrics": metrics}
    storage.produce_dir(out, lambda d: save_world_model(result.model, d, info=info, overwrite=True))
    return {"train_s": result.seconds, **{k: metrics[k] for k in WM_KEEP if k in metrics}}


def train_world_model_remote(cfg: PipelineConfig, cohort: str, out: str, timeout_s: float = 3600) -> dict[str, Any]:
    task = ray.remote(_train_world_model).options(num_cpus=max(1, cfg.cluster.threads), max_retries=0)
    return ray.get(task.remote(cohort, cfg.world_model.preset, out), timeout=timeout_s)


# -------------------------------------------------------------------------------------------- BC
def psr_agent(cfg: PipelineConfig, model: str | None, tokenizer: str, cohort: str, world_model: str, temperature: float):
    """(PSR agent, world-model simulator, history window); ``model=None`` gives an agent without an engine."""
    from transformers import AutoTokenizer

    from sepsis_rl.cohort.store import read_spec
    from sepsis_rl.curriculum.rl_stage import agent_config
    from sepsis_rl.rollout.psr import PSRAgent
    from sepsis_rl.rollout.transformers_engine import TransformersEngine
    from world_model.checkpoint import load_world_model
    from world_model.simulation import SimulationConfig, WorldModelSimulator

    spec = read_spec(storage.local_copy(cohort))
    acfg = replace(agent_config(cfg), temperature=temperature)
    engine = TransformersEngine(storage.local_copy(model)) if model else None
    tok = engine.tokenizer if engine else AutoTokenizer.from_pretrained(storage.local_copy(tokenizer))
    wm = load_world_model(storage.local_copy(world_model))
    sim = WorldModelSimulator(wm, SimulationConfig(max_steps=cfg.rl.max_steps, seed=cfg.seed))
    return PSRAgent(engine, tok, spec, acfg), sim, wm.window


def _bc_traces(cfg: PipelineConfig, tokenizer: str, cohort: str, world_model: str) -> tuple[list, list]:
    """(training traces from the train split, held-out traces from val): whole PSR decisions as text, the
    prescription chosen by ``bc.target`` (the simulation's best candidate, or the clinician's action)."""
    from sepsis_rl.curriculum.cohort_rows import CohortRows
    from sepsis_rl.curriculum.psr_traces import psr_traces

    local = storage.local_copy(cohort)
    agent, sim, window = psr_agent(cfg, None, tokenizer, cohort, world_model, 1.0)
    train = psr_traces(CohortRows.load(local, "train"), agent, sim, window, cfg.bc.traces, cfg.seed, cfg.bc.target,
                       cfg.bc.candidates)
    heldout = psr_traces(CohortRows.load(local, "val"), agent, sim, window, max(cfg.bc.traces // 8, 4), cfg.seed + 1,
                         cfg.bc.target, cfg.bc.candidates)
    return train, heldout


def _bc_decisions(cfg: PipelineConfig, model: str, cohort: str, world_model: str) -> dict[str, Any]:
    """Greedy decisions of ``model`` on held-out states against the clinician's (accuracy, parse failures)."""
    from sepsis_rl.curriculum.cohort_rows import CohortRows
    from sepsis_rl.curriculum.psr_traces import heldout_decisions

    agent, sim, window = psr_agent(cfg, model, model, cohort, world_model, 0.0)
    rows = CohortRows.load(storage.local_copy(cohort), cfg.heldout_split)
    return heldout_decisions(rows, agent, sim, window, cfg.bc.eval_states, cfg.seed)


def _options(cfg: PipelineConfig) -> dict[str, Any]:
    ro = cfg.rollout
    return {"num_cpus": ro.cpus_per_worker, "num_gpus": ro.gpus_per_worker, "max_retries": 0}


def bc_traces_remote(cfg: PipelineConfig, tokenizer: str, cohort: str, world_model: str, timeout_s: float = 3600):
    return ray.get(ray.remote(_bc_traces).options(**_options(cfg)).remote(cfg, tokenizer, cohort, world_model),
                   timeout=timeout_s)


def bc_decisions_remote(cfg: PipelineConfig, model: str, cohort: str, world_model: str, timeout_s: float = 3600):
    return ray.get(ray.remote(_bc_decisions).options(**_options(cfg)).remote(cfg, model, cohort, world_model),
                   timeout=timeout_s)
