"""The pipeline driver: cohort -> world model -> stage 1 (dynamics SFT) -> stage 2 (PSR BC) -> stage 3 (RL)
-> a held-out check against the clinician and a random policy -> the exported agent.

Each stage reads only the previous stages' outputs in the run directory and records itself there when
done, so ``--resume`` skips finished stages and stage 3 continues from its last checkpoint. The same
driver runs on a laptop (``ray.init`` local) and on a cluster (``RAY_ADDRESS`` set, e.g. by a RayJob).
"""

from __future__ import annotations

import json
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

from sepsis_rl import storage
from sepsis_rl.checkpoint import atomic_dir
from sepsis_rl.curriculum.config import ConfigError, PipelineConfig, config_from_dict, dump_config
from sepsis_rl.curriculum.run_dir import RunDir
from sepsis_rl.curriculum.run_lock import RunLock
from sepsis_rl.ray_start import start_ray as _start_ray

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
    """Join the cluster in RAY_ADDRESS, or start a local loopback-only one large enough for the preset."""
    return _start_ray(max(os.cpu_count() or 2, math.ceil(resources_needed(cfg))), dashboard)


def _check_resume(run: RunDir, cfg: PipelineConfig, resume: bool) -> bool:
    """True if the folder already holds this run (and --resume was asked); refuses anything else."""
    saved = run.uri("config.yaml")
    if not storage.exists(saved):
        return False
    if not resume:
        raise FileExistsError(f"{run.location} already holds a run: pass --resume to continue it, or choose another --out")
    # compared as configs, so keys that a newer version added (at their defaults) do not block a resume
    if config_from_dict(yaml.safe_load(storage.read_text(saved)), str(saved)).to_dict() != cfg.to_dict():
        raise ConfigError(f"{saved} differs from the requested configuration: a resumed run keeps its config")
    return True


def run_pipeline(cfg: PipelineConfig, opts: PipelineOptions) -> dict[str, Any]:
    run = RunDir(opts.out_dir)
    with RunLock(run.root, run.location):
        return _run_locked(cfg, opts, run)


def _run_locked(cfg: PipelineConfig, opts: PipelineOptions, run: RunDir) -> dict[str, Any]:
    from sepsis_rl.curriculum.visibility import check_run_dir_visible

    existing = _check_resume(run, cfg, opts.resume)
    started = start_ray(cfg, opts.dashboard)
    steps: dict[str, Callable[[PipelineConfig, RunDir, PipelineOptions], tuple[str, dict[str, Any]]]] = {
        "cohort": stage_cohort, "world_model": stage_world_model, "sft": stage_sft, "bc": stage_bc, "rl": stage_rl,
        "final": stage_final, "evaluate": stage_evaluate,
    }
    try:
        check_run_dir_visible(run.location)  # before anything is written
        if not existing:
            dump_config(cfg, run.path("config.yaml"))
            run.publish_file("config.yaml")
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
        if storage.is_uri(opts.cohort_dir):
            out, local = opts.cohort_dir, storage.local_copy(opts.cohort_dir)
        else:
            out = local = str(Path(opts.cohort_dir).resolve())
        read_spec(local)  # a clear error now rather than in a later stage
    else:
        local = str(synthesize_cohort(run.path("cohort"), cfg.cohort.patients, seed=cfg.cohort.seed, overwrite=True))
        run.publish("cohort")
        out = run.uri("cohort")
    d = describe_cohort(local)
    return out, {k: d[k] for k in ("episodes", "steps", "mortality", "mean_return") if k in d}


def stage_world_model(cfg: PipelineConfig, run: RunDir, opts: PipelineOptions) -> tuple[str, dict[str, Any]]:
    """Trained and evaluated in a resourced Ray task (any node), written through the storage layer."""
    from sepsis_rl.curriculum.remote_tasks import train_world_model_remote

    out = run.uri("world_model")
    return out, train_world_model_remote(cfg, run.output("cohort"), out)


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
            run.publish("base_model")
        return run.uri("base_model")
    return resolve_base_model(cfg.base_model)


def _supervised(cfg: PipelineConfig, run: RunDir, stage: str, init: str, train, heldout, lr: float, micro: int,
                ga: int, epochs: int) -> dict[str, Any]:
    from sepsis_rl.curriculum.supervised import learner_config, train_supervised
    from sepsis_rl.learner.group import LearnerGroup

    group = LearnerGroup(learner_config(cfg.cluster, init, "sft", lr, micro, ga, cfg.seed))
    try:
        metrics = train_supervised(group, train, heldout, epochs, cfg.seed, run, stage)
        group.export(run.uri(stage, "model"))
    finally:
        group.shutdown()
    return metrics


def stage_sft(cfg: PipelineConfig, run: RunDir, opts: PipelineOptions) -> tuple[str, dict[str, Any]]:
    from transformers import AutoTokenizer

    from sepsis_rl.curriculum.cohort_rows import CohortRows
    from sepsis_rl.curriculum.dynamics_sft import dynamics_samples

    init = base_model_path(cfg, run)
    tok = AutoTokenizer.from_pretrained(storage.local_copy(init))
    cohort = run.local("cohort")
    style = cfg.rollout.prompt_style
    train = dynamics_samples(CohortRows.load(cohort, "train"), tok, cfg.sft.samples, cfg.seed, style)
    heldout = dynamics_samples(CohortRows.load(cohort, "val"), tok, cfg.sft.heldout_samples, cfg.seed + 1, style)
    metrics = _supervised(cfg, run, "sft", init, train, heldout, cfg.sft.lr, cfg.sft.micro_batch, cfg.sft.grad_accum,
                          cfg.sft.epochs)
    return run.uri("sft", "model"), {"base_model": run.relative(init), **metrics}


def stage_bc(cfg: PipelineConfig, run: RunDir, opts: PipelineOptions) -> tuple[str, dict[str, Any]]:
    """Traces and the before/after held-out evaluation run as resourced Ray tasks; the learner trains on the traces."""
    from sepsis_rl.curriculum.cohort_rows import CohortRows
    from sepsis_rl.curriculum.psr_traces import majority_rate
    from sepsis_rl.curriculum.remote_tasks import bc_decisions_remote, bc_traces_remote

    cohort, init, wm = run.output("cohort"), run.output("sft"), run.output("world_model")
    train, heldout = bc_traces_remote(cfg, init, cohort, wm)
    before = bc_decisions_remote(cfg, init, cohort, wm)
    metrics = _supervised(cfg, run, "bc", init, train, heldout, cfg.bc.lr, cfg.bc.micro_batch, cfg.bc.grad_accum, cfg.bc.epochs)
    after = bc_decisions_remote(cfg, run.uri("bc", "model"), cohort, wm)
    local = run.local("cohort")
    metrics.update({
        "action_accuracy": after["accuracy"], "action_accuracy_before": before["accuracy"],
        "parse_failure_rate": after["parse_failure_rate"], "parse_failure_rate_before": before["parse_failure_rate"],
        "heldout_decisions": after["decisions"],
        **{f"{k}{suffix}": m[k] for k in ("follows_score", "proposal_recall", "anchor_recall") for m, suffix in ((after, ""), (before, "_before"))
           if k in m},
        **majority_rate(CohortRows.load(local, "train"), CohortRows.load(local, cfg.heldout_split)),
    })
    return run.uri("bc", "model"), metrics


def stage_rl(cfg: PipelineConfig, run: RunDir, opts: PipelineOptions) -> tuple[str, dict[str, Any]]:
    from sepsis_rl.curriculum.rl_stage import RLInputs, RLStage

    inputs = RLInputs(run.output("bc"), run.output("cohort"), run.output("world_model"), run.uri("rl", "model"),
                      local_cohort=run.local("cohort"))
    stage = RLStage(cfg, run, inputs)
    try:
        metrics = stage.run_all()
        metrics["baselines"] = stage.baselines()
    finally:
        stage.shutdown()
    return inputs.out_model, metrics


def _feature_medians(cohort: str) -> dict[str, float]:
    """Train-split medians per feature: what a served request's missing values are imputed with."""
    import numpy as np

    from sepsis_rl.cohort.store import read_spec, read_split, table_features

    spec = read_spec(cohort)
    med = np.nanmedian(table_features(read_split(cohort, "train", spec), spec), axis=0)
    return {n: float(v) for n, v in zip(spec.feature_names, med)}


def stage_final(cfg: PipelineConfig, run: RunDir, opts: PipelineOptions) -> tuple[str, dict[str, Any]]:
    """Package the agent and put its held-out return next to the clinician's and a random policy's.

    ``agent/`` is self-contained (paths in agent.yaml are relative to it): the policy, the world model,
    the cohort spec and the imputation medians; serving and evaluation need nothing else.
    """
    from sepsis_rl.cohort.store import SPEC_FILE
    from sepsis_rl.curriculum.rl_stage import agent_config

    agent = agent_config(cfg)  # the decision procedure the agent was trained with, recorded in agent.yaml
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
    cohort = run.local("cohort")
    with atomic_dir(run.path("agent")) as tmp:
        shutil.copytree(run.local("rl"), tmp / "model")
        shutil.copytree(run.local("world_model"), tmp / "world_model")
        shutil.copy(Path(cohort) / SPEC_FILE, tmp / "cohort.json")
        (tmp / "feature_medians.json").write_text(json.dumps(_feature_medians(cohort), indent=1))
        (tmp / "agent.yaml").write_text(yaml.safe_dump({
            "model": "model", "world_model": "world_model", "cohort_spec": "cohort.json",
            "feature_medians": "feature_medians.json",
            "agent": {"k": agent.k, "horizon": agent.horizon, "temperature": 0.0, "prompt_style": agent.prompt_style,
                      "fallback": agent.fallback.value},
            "config": cfg.to_dict(),
        }, sort_keys=False))
    run.publish("agent")
    comparison["value_kind"] = ("in-model: the learned world model the agent trains in and consults, "
                                f"{comparison['episodes']} held-out patients, {cfg.rl.max_steps} decisions; "
                                "see summary.evaluation for true values")
    run.set_summary("heldout_comparison", comparison)
    return run.uri("agent"), dict(comparison)


# the curriculum's stages (base model with the tool, after SFT, after BC, the final agent after RL) beside
# the clinician, the planners (the agent's ceiling with its own tool; the oracle's with the true one)
HEADLINE = ("base_llm_wm", "after_sft", "after_bc", "agent", "clinician", "random", "guideline", "wm_planner",
            "wm_planner_k3", "wm_planner_gl3", "oracle_planner_k3")


def stage_evaluate(cfg: PipelineConfig, run: RunDir, opts: PipelineOptions) -> tuple[str, dict[str, Any]]:
    """``sepsis-rl evaluate`` on this run; its headline (true value and DR) goes into summary.json."""
    from sepsis_rl.eval.evaluate import EvalConfig
    from sepsis_rl.eval.registry import Sources
    from sepsis_rl.eval.run import run_evaluation, write_outputs, write_partial

    if not cfg.evaluate.enabled:
        return run.uri("eval"), {"skipped": True}
    e = cfg.evaluate
    ecfg = EvalConfig(policies=tuple(p.strip() for p in e.policies.split(",") if p.strip()),
                      patients=e.patients or None, llm_patients=e.llm_patients, llm_ope_episodes=e.llm_stays or e.llm_patients,
                      stage_patients=e.stage_patients or None, stage_ope=e.stage_ope,
                      gamma=e.gamma, n_boot=e.bootstrap, seed=cfg.seed, baselines=e.baselines,
                      engine=e.engine or cfg.rollout.engine, llm_cpus=e.llm_cpus, llm_gpus=e.llm_gpus,
                      llm_dtype=e.llm_dtype)
    partial = run.path("eval.partial.json")  # what finished survives a stop of a long LLM evaluation
    report = run_evaluation(Sources.from_run(run.root), ecfg, on_partial=lambda r: write_partial(r, partial))
    with atomic_dir(run.path("eval")) as tmp:
        write_outputs(report, tmp)
    Path(partial).unlink(missing_ok=True)
    run.publish("eval")
    headline = {}
    for name in HEADLINE:
        p = report["policies"].get(name)
        if p is None:
            continue
        t, dr = p.get("true"), p.get("ope", {}).get("dr")
        headline[name] = {"status": p["status"], "true_return": t and t["return"], "true_return_ci": t and t["return_ci"],
                          "true_survival": t and t["survival"], "true_survival_ci": t and t["survival_ci"],
                          "true_patients": t and t["n_patients"], "dr": dr and dr.get("value"), "dr_ci": dr and dr.get("ci")}
        if t and "diff_survival_vs_clinician" in t:  # paired on the same patients
            headline[name] |= {"survival_vs_clinician": t["diff_survival_vs_clinician"],
                               "survival_vs_clinician_ci": t.get("diff_survival_ci")}
        if p.get("llm"):
            headline[name] |= {k: p["llm"][k] for k in ("parse_failure_rate", "fallback_rate") if k in p["llm"]}
    run.set_summary("evaluation", {"value_kinds": "true = ground-truth simulator; dr = off-policy estimate (logged "
                                   "test stays, 95% bootstrap CI)", "gamma": e.gamma, "policies": headline,
                                   "paired_true_differences": report.get("paired", [])})
    failed = [n for n, p in report["policies"].items() if p["status"] != "ok"]
    return run.uri("eval"), {"policies": len(report["policies"]), "failed": failed}
