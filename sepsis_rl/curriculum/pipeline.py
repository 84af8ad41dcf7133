"""The pipeline driver: cohort -> world model -> stage 1 (dynamics SFT) -> stage 2 (PSR BC) -> stage 3 (RL)
-> a held-out check against the clinician and a random policy -> the exported agent.

Each stage reads only the previous stages' outputs in the run directory and records itself there when
done, so ``--resume`` skips finished stages and stage 3 continues from its last checkpoint. The same
driver runs on a laptop (``ray.init`` local) and on a cluster (``RAY_ADDRESS`` set, e.g. by a RayJob).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray
import yaml

from sepsis_rl.checkpoint import atomic_dir
from sepsis_rl.curriculum.config import ConfigError, PipelineConfig, dump_config
from sepsis_rl.curriculum.run_dir import RunDir

log = logging.getLogger(__name__)
STAGES = ("cohort", "world_model", "sft", "bc", "rl", "final", "evaluate")


@dataclass
class PipelineOptions:
    out_dir: str
    cohort_dir: str | None = None  # use this cohort instead of synthesising one
    resume: bool = False
    dashboard: bool = True
    stages: tuple[str, ...] = STAGES  # `sepsis-rl train --stage` runs one


def resources_needed(cfg: PipelineConfig) -> float:
    cl, ro = cfg.cluster, cfg.rollout
    return cl.learner_workers * cl.learner_cpus + ro.workers * ro.cpus_per_worker + cl.simulator_shards * cl.simulator_cpus


def start_ray(cfg: PipelineConfig, dashboard: bool) -> bool:
    """Join the cluster in RAY_ADDRESS, or start a local one large enough for the preset; True if started here."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return True
    cpus = max(os.cpu_count() or 2, math.ceil(resources_needed(cfg)))
    ray.init(address="local", num_cpus=cpus, include_dashboard=dashboard, log_to_driver=False)
    return True


def _check_resume(run: RunDir, cfg: PipelineConfig, resume: bool) -> None:
    saved = run.path("config.yaml")
    if saved.exists():
        if not resume:
            raise FileExistsError(f"{run.root} already holds a run: pass --resume to continue it, or choose another --out")
        if yaml.safe_load(saved.read_text()) != cfg.to_dict():
            raise ConfigError(f"{saved} differs from the requested configuration: a resumed run keeps its config")
    else:
        dump_config(cfg, saved)


def run_pipeline(cfg: PipelineConfig, opts: PipelineOptions) -> dict[str, Any]:
    run = RunDir(opts.out_dir)
    _check_resume(run, cfg, opts.resume)
    started = start_ray(cfg, opts.dashboard)
    steps: dict[str, Callable[[PipelineConfig, RunDir, PipelineOptions], tuple[str, dict[str, Any]]]] = {
        "cohort": stage_cohort, "world_model": stage_world_model, "sft": stage_sft, "bc": stage_bc, "rl": stage_rl,
        "final": stage_final, "evaluate": stage_evaluate,
    }
    try:
        for name in opts.stages:
            if run.done(name):
                log.info("stage %s: already done (%s)", name, run.output(name))
                continue
            log.info("stage %s: starting", name)
            t0 = time.perf_counter()
            output, metrics = steps[name](cfg, run, opts)
            metrics["wall_s"] = time.perf_counter() - t0
            run.complete(name, output, metrics)
            run.log(name, event="done", wall_s=metrics["wall_s"])
            log.info("stage %s: done in %.0f s -> %s", name, metrics["wall_s"], output)
    finally:
        if started:
            ray.shutdown()
    return run.summary


# ----------------------------------------------------------------------------------------- stages
def stage_cohort(cfg: PipelineConfig, run: RunDir, opts: PipelineOptions) -> tuple[str, dict[str, Any]]:
    from sepsis_rl.cohort.describe import describe_cohort
    from sepsis_rl.cohort.store import read_spec
    from sepsis_rl.cohort.synth import synthesize_cohort

    if opts.cohort_dir:
        read_spec(opts.cohort_dir)  # a clear error now rather than in a later stage
        path = str(Path(opts.cohort_dir).resolve())
    else:
        path = str(synthesize_cohort(run.path("cohort"), cfg.cohort.patients, seed=cfg.cohort.seed, overwrite=True))
    d = describe_cohort(path)
    return path, {k: d[k] for k in ("episodes", "steps", "mortality", "mean_return") if k in d}


def stage_world_model(cfg: PipelineConfig, run: RunDir, opts: PipelineOptions) -> tuple[str, dict[str, Any]]:
    from world_model.checkpoint import save_world_model
    from world_model.evaluate import EvalConfig, evaluate_world_model
    from world_model.presets import get_preset
    from world_model.train import train_world_model

    cohort = run.output("cohort")
    result = train_world_model(cohort, get_preset(cfg.world_model.preset))
    metrics = evaluate_world_model(result.model, cohort, EvalConfig(counterfactual=False))
    out = save_world_model(result.model, run.path("world_model"), info={"train": result.summary(), "metrics": metrics},
                           overwrite=True)
    keep = ("state_mae", "persistence_mae", "vent_auroc", "outcome_auroc", "outcome_auprc")
    return str(out), {"train_s": result.seconds, **{k: metrics[k] for k in keep if k in metrics}}


def base_model_path(cfg: PipelineConfig, run: RunDir) -> str:
    from sepsis_rl.models import build_tiny_model, resolve_base_model

    if cfg.base_model == "tiny":  # a random tiny Llama with the default tokenizer: tests and smoke runs
        out = run.path("base_model")
        if not (out / "config.json").exists():
            with atomic_dir(out) as tmp:
                build_tiny_model(resolve_base_model("default"), tmp / "m", seed=cfg.seed)
                for f in (tmp / "m").iterdir():
                    f.rename(tmp / f.name)
                (tmp / "m").rmdir()
        return str(out)
    return resolve_base_model(cfg.base_model)


def _supervised(cfg: PipelineConfig, run: RunDir, stage: str, init: str, train, heldout, lr: float, micro: int,
                ga: int, epochs: int) -> dict[str, Any]:
    from sepsis_rl.curriculum.supervised import learner_config, train_supervised
    from sepsis_rl.learner.group import LearnerGroup

    group = LearnerGroup(learner_config(cfg.cluster, init, "sft", lr, micro, ga, cfg.seed))
    try:
        metrics = train_supervised(group, train, heldout, epochs, cfg.seed, run, stage)
        group.export(str(run.path(stage, "model")))
    finally:
        group.shutdown()
    return metrics


def stage_sft(cfg: PipelineConfig, run: RunDir, opts: PipelineOptions) -> tuple[str, dict[str, Any]]:
    from transformers import AutoTokenizer

    from sepsis_rl.curriculum.cohort_rows import CohortRows
    from sepsis_rl.curriculum.dynamics_sft import dynamics_samples

    init = base_model_path(cfg, run)
    tok = AutoTokenizer.from_pretrained(init)
    cohort = run.output("cohort")
    train = dynamics_samples(CohortRows.load(cohort, "train"), tok, cfg.sft.samples, cfg.seed)
    heldout = dynamics_samples(CohortRows.load(cohort, "val"), tok, cfg.sft.heldout_samples, cfg.seed + 1)
    metrics = _supervised(cfg, run, "sft", init, train, heldout, cfg.sft.lr, cfg.sft.micro_batch, cfg.sft.grad_accum,
                          cfg.sft.epochs)
    return str(run.path("sft", "model")), {"base_model": init, **metrics}


def _psr_agent(cfg: PipelineConfig, model_path: str | None, run: RunDir, temperature: float):
    from dataclasses import replace

    from transformers import AutoTokenizer

    from sepsis_rl.cohort.store import read_spec
    from sepsis_rl.curriculum.rl_stage import agent_config
    from sepsis_rl.rollout.psr import PSRAgent
    from sepsis_rl.rollout.transformers_engine import TransformersEngine
    from world_model.checkpoint import load_world_model
    from world_model.simulation import SimulationConfig, WorldModelSimulator

    spec = read_spec(run.output("cohort"))
    acfg = replace(agent_config(cfg), temperature=temperature)
    engine = TransformersEngine(model_path) if model_path else None
    tok = engine.tokenizer if engine else AutoTokenizer.from_pretrained(run.output("sft"))
    model = load_world_model(run.output("world_model"))
    sim = WorldModelSimulator(model, SimulationConfig(max_steps=cfg.rl.max_steps, seed=cfg.seed))
    return PSRAgent(engine, tok, spec, acfg), sim, model.window


def stage_bc(cfg: PipelineConfig, run: RunDir, opts: PipelineOptions) -> tuple[str, dict[str, Any]]:
    from sepsis_rl.curriculum.cohort_rows import CohortRows
    from sepsis_rl.curriculum.psr_traces import heldout_decisions, majority_rate, psr_traces

    cohort, init = run.output("cohort"), run.output("sft")
    rows, val = CohortRows.load(cohort, "train"), CohortRows.load(cohort, "val")
    heldout_rows = CohortRows.load(cohort, cfg.heldout_split)
    agent, sim, window = _psr_agent(cfg, None, run, 1.0)
    if cfg.bc.target not in ("simulation", "clinician"):
        raise ConfigError(f"bc.target must be 'simulation' or 'clinician', got {cfg.bc.target!r}")
    train = psr_traces(rows, agent, sim, window, cfg.bc.traces, cfg.seed, cfg.bc.target)
    heldout = psr_traces(val, agent, sim, window, max(cfg.bc.traces // 8, 4), cfg.seed + 1, cfg.bc.target)
    before_agent, *_ = _psr_agent(cfg, init, run, 0.0)
    before = heldout_decisions(heldout_rows, before_agent, sim, window, cfg.bc.eval_states, cfg.seed)
    del before_agent
    metrics = _supervised(cfg, run, "bc", init, train, heldout, cfg.bc.lr, cfg.bc.micro_batch, cfg.bc.grad_accum, cfg.bc.epochs)
    after_agent, *_ = _psr_agent(cfg, str(run.path("bc", "model")), run, 0.0)
    after = heldout_decisions(heldout_rows, after_agent, sim, window, cfg.bc.eval_states, cfg.seed)
    metrics.update({
        "action_accuracy": after["accuracy"], "action_accuracy_before": before["accuracy"],
        "parse_failure_rate": after["parse_failure_rate"], "parse_failure_rate_before": before["parse_failure_rate"],
        "heldout_decisions": after["decisions"], **majority_rate(rows, heldout_rows),
    })
    return str(run.path("bc", "model")), metrics


def stage_rl(cfg: PipelineConfig, run: RunDir, opts: PipelineOptions) -> tuple[str, dict[str, Any]]:
    from sepsis_rl.curriculum.rl_stage import RLInputs, RLStage

    inputs = RLInputs(run.output("bc"), run.output("cohort"), run.output("world_model"), str(run.path("rl", "model")))
    stage = RLStage(cfg, run, inputs)
    try:
        metrics = stage.run_all()
        metrics["baselines"] = stage.baselines()
    finally:
        stage.shutdown()
    return inputs.out_model, metrics


def stage_final(cfg: PipelineConfig, run: RunDir, opts: PipelineOptions) -> tuple[str, dict[str, Any]]:
    """Package the agent and put its held-out return next to the clinician's and a random policy's."""
    rl = run.summary["stages"]["rl"]
    history = rl["history"]
    evaluated = [h for h in history if "heldout_mean_cohort_return" in h]
    first, last = evaluated[0], evaluated[-1]
    comparison = {
        "agent_before_rl": first["heldout_mean_cohort_return"], "agent": last["heldout_mean_cohort_return"],
        "agent_mortality": last["heldout_mortality"], "agent_parse_failure_rate": last["heldout_parse_failure_rate"],
        **{f"{name}": b["mean_return"] for name, b in rl["baselines"].items()},
        **{f"{name}_mortality": b["mortality"] for name, b in rl["baselines"].items()},
        "episodes": last["heldout_episodes"],
    }
    out = run.path("agent")
    with atomic_dir(out) as tmp:
        shutil.copytree(run.output("rl"), tmp / "model")
        shutil.copytree(run.output("world_model"), tmp / "world_model")
        (tmp / "agent.yaml").write_text(yaml.safe_dump({
            "model": "model", "world_model": "world_model", "cohort": run.output("cohort"),
            "agent": {"k": cfg.rollout.k, "horizon": cfg.rollout.horizon, "temperature": 0.0},
            "config": cfg.to_dict(),
        }, sort_keys=False))
    comparison["value_kind"] = ("in-model: the learned world model the agent trains in and consults, "
                                f"{comparison['episodes']} held-out patients, {cfg.rl.max_steps} decisions; "
                                "see summary.evaluation for true values")
    run.set_summary("heldout_comparison", comparison)
    return str(out), dict(comparison)


HEADLINE = ("agent", "clinician", "random", "wm_planner", "wm_planner_k3")


def stage_evaluate(cfg: PipelineConfig, run: RunDir, opts: PipelineOptions) -> tuple[str, dict[str, Any]]:
    """``sepsis-rl evaluate`` on this run; its headline (true value and DR) goes into summary.json."""
    from sepsis_rl.eval.evaluate import EvalConfig
    from sepsis_rl.eval.registry import Sources
    from sepsis_rl.eval.run import run_evaluation, write_outputs

    if not cfg.evaluate.enabled:
        return "", {"skipped": True}
    e = cfg.evaluate
    ecfg = EvalConfig(policies=tuple(p.strip() for p in e.policies.split(",") if p.strip()),
                      patients=e.patients or None, llm_patients=e.llm_patients, llm_ope_episodes=e.llm_patients,
                      gamma=e.gamma, n_boot=e.bootstrap, seed=cfg.seed, baselines=e.baselines, engine=cfg.rollout.engine)
    report = run_evaluation(Sources.from_run(run.root), ecfg)
    out = run.path("eval")
    with atomic_dir(out) as tmp:
        write_outputs(report, tmp)
    headline = {}
    for name in HEADLINE:
        p = report["policies"].get(name)
        if p is None:
            continue
        t, dr = p.get("true"), p.get("ope", {}).get("dr")
        headline[name] = {"status": p["status"], "true_return": t and t["return"], "true_return_ci": t and t["return_ci"],
                          "true_survival": t and t["survival"], "true_survival_ci": t and t["survival_ci"],
                          "true_patients": t and t["n_patients"], "dr": dr and dr.get("value"), "dr_ci": dr and dr.get("ci")}
    run.set_summary("evaluation", {"value_kinds": "true = ground-truth simulator; dr = off-policy estimate (logged "
                                   "test stays, 95% bootstrap CI)", "gamma": e.gamma, "policies": headline})
    return str(out), {"policies": len(report["policies"]),
                      "failed": [n for n, p in report["policies"].items() if p["status"] != "ok"]}
