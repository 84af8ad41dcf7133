"""Run the evaluation of many policies in parallel Ray tasks and assemble ``report.json``."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sepsis_rl.eval.evaluate import EvalConfig, evaluate_one, failed
from sepsis_rl.eval.registry import LLM_POLICIES, Sources

log = logging.getLogger(__name__)
REFERENCE = "clinician"
RLLIB_POLICIES = ("bc", "marwil")


def run_evaluation(sources: Sources, cfg: EvalConfig, task_timeout_s: float | None = None,
                   on_partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Evaluate ``cfg.policies`` (the clinician always, as the reference); returns the report dict.

    ``on_partial`` receives the report of the policies finished so far after each one finishes, so a
    stopped evaluation keeps what it measured (LLM policies can take an hour on a laptop)."""
    import ray

    names = list(dict.fromkeys([REFERENCE, *cfg.policies]))
    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
        started = True
    try:
        results = _run_policies(names, sources, cfg, task_timeout_s, on_partial)
    finally:
        if started:
            ray.shutdown()
    return assemble(sources, cfg, {n: results[n] for n in names})


def _run_policies(names: list[str], sources: Sources, cfg: EvalConfig, task_timeout_s: float | None,
                  on_partial: Callable[[dict[str, Any]], None] | None) -> dict[str, dict[str, Any]]:
    """Classic policies as one Ray task each; LLM policies on ``LLMEvaluator`` actors (``LLMQueue``).

    On CPU engines the LLM policies start once the classic ones are done: an engine's threads sharing
    the cores with other work lose more than that work gains (runs/cpu23: the agent decided at 1.5/s
    beside the baselines, 2.5/s alone; they take ~4 min alone). GPU engines start at once."""
    import ray
    from tqdm import tqdm

    from sepsis_rl.eval.evaluate import llm_model_path
    from sepsis_rl.eval.llm_evaluator import LLMQueue, group_by_signature

    # a fresh worker process per classic policy: memory is returned between policies
    task = ray.remote(max_retries=0, max_calls=1)(evaluate_one)
    cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
    refs = {task.options(**task_resources(n, cfg, cluster_cpus)).remote(n, sources, cfg): n
            for n in names if n not in LLM_POLICIES}
    llm_names = [n for n in names if n in LLM_POLICIES]
    queue = LLMQueue(group_by_signature(llm_names, lambda n: llm_model_path(n, sources)), sources, cfg,
                     llm_slots(cfg, ray.cluster_resources()), task_resources(llm_names[0], cfg, cluster_cpus)) \
        if llm_names else None
    llm_refs: set[Any] = set()
    results: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(names), desc="evaluating policies") as bar:
        while refs or (queue is not None and not queue.done):
            if queue is not None and not llm_refs and not queue.done and (cfg.llm_gpus > 0 or not refs):
                llm_refs |= _add(refs, queue.start())  # once: later LLM calls follow from next_for
            done, _ = ray.wait(list(refs), num_returns=1, timeout=task_timeout_s)
            if not done:
                for r, n in refs.items():
                    results[n] = failed(n, TimeoutError(f"no result within {task_timeout_s} s"))
                    if r not in llm_refs:
                        ray.cancel(r, force=True)
                if queue is not None:
                    for n in queue.unsubmitted():
                        results[n] = failed(n, TimeoutError(f"not started: the evaluation stalled for {task_timeout_s} s"))
                    queue.kill_all()
                break
            ref = done[0]
            name = refs.pop(ref)
            died = False
            try:
                results[name] = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - one policy's failure must not stop the others
                died = isinstance(e, ray.exceptions.RayActorError)
                results[name] = failed(name, getattr(e, "cause", None) or e)
            if ref in llm_refs:
                llm_refs.discard(ref)
                llm_refs |= _add(refs, queue.next_for(ref, died))  # type: ignore[union-attr]
            bar.set_postfix_str(f"{name}: {results[name]['status']}")
            bar.update()
            if on_partial is not None and (refs or (queue is not None and not queue.done)):
                on_partial(assemble(sources, cfg, copy.deepcopy({n: results[n] for n in names if n in results})))
    return results


def _add(refs: dict[Any, str], new: dict[Any, str]) -> set[Any]:
    refs.update(new)
    return set(new)


def llm_slots(cfg: EvalConfig, cluster: dict[str, float]) -> int:
    """LLM actors at once: one per ``llm_gpus`` GPUs on GPU engines, else one per ``llm_cpus`` CPUs (at least 1)."""
    if cfg.llm_gpus > 0:
        return max(1, int(cluster.get("GPU", 0.0) // cfg.llm_gpus))
    return max(1, int(cluster.get("CPU", 1.0) // max(cfg.llm_cpus, 1e-9)))


def task_resources(name: str, cfg: EvalConfig, cluster_cpus: float) -> dict[str, float]:
    """Ray resources of a policy's task. An LLM policy's engine uses every core it is given (vLLM's CPU
    backend binds its threads to the node's cores), so it reserves ``cfg.llm_cpus``: two CPU engines on
    the same cores would only share them, their threads contending."""
    if name in LLM_POLICIES:  # capped at the cluster's CPUs: never a request that cannot be scheduled
        return {"num_cpus": min(cfg.llm_cpus, cluster_cpus), "num_gpus": cfg.llm_gpus}
    return {"num_cpus": task_cpus(name)}


def task_cpus(name: str) -> float:
    """CPUs a policy's task reserves. RLlib baselines reserve none: their own learner and Ray Data actors
    request CPUs from the same cluster, and a task holding the last CPU would starve them (a deadlock)."""
    return 0.0 if name in RLLIB_POLICIES else 1.0


def assemble(sources: Sources, cfg: EvalConfig, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pair every true value with the clinician's on the same patients; keep the per-patient true outcomes
    (``truth_arrays``), so that any two policies can be paired, and pair the ones ``PAIRS`` names."""
    ref = results.get(REFERENCE, {}).get("truth_arrays")
    policies: dict[str, Any] = {}
    for name, r in results.items():
        arrays = r.pop("truth_arrays", None)
        r["true"] = paired_truth(arrays, ref) if arrays is not None else None
        r["truth_arrays"] = per_patient_truth(arrays) if arrays is not None else None
        r["kind"] = "llm" if name in LLM_POLICIES else "classic"
        policies[name] = r
    return {"cohort": sources.cohort, "run_dir": sources.run_dir, "split": cfg.split, "gamma": cfg.gamma,
            "logged_clinician": logged_clinician(sources, cfg),
            "n_episodes": _n_episodes(policies), "repeats": cfg.repeats, "n_boot": cfg.n_boot,
            "llm_probability": {"mode": cfg.llm_probs.mode, "epsilon": cfg.llm_probs.epsilon, "samples": cfg.llm_probs.samples},
            "value_kinds": {"true": "ground-truth simulator, common random numbers, full stays from admission",
                            "ope": "off-policy estimates from the logged test stays (bootstrap 95% CI over patients, ESS)",
                            "wm": "in-model: the policy played in the learned world model (never a headline)"},
            "paired": paired_table(policies), "policies": policies}


def logged_clinician(sources: Sources, cfg: EvalConfig) -> dict[str, Any]:
    """The logged test stays' own discounted return and survival (the clinician's on-policy value, 95% CI):
    re-simulated from admission in the truth it must agree with the clinician's true value within CIs."""
    from sepsis_rl.cohort.truth import mean_ci
    from sepsis_rl.eval.logged import LoggedData

    data = LoggedData.from_cohort(sources.cohort, cfg.split)
    r, r_ci = mean_ci(data.returns(cfg.gamma))
    s, s_ci = mean_ci(1.0 - data.outcome[data.episode_starts()])
    return {"return": r, "return_ci": list(r_ci), "survival": s, "survival_ci": list(s_ci),
            "n_episodes": int(len(data.episode_starts()))}


def paired_truth(arrays: dict[str, list], ref: dict[str, list] | None) -> dict[str, Any]:
    """True return/survival with CIs, and the paired difference to the clinician on the same patients."""
    from sepsis_rl.cohort.truth import mean_ci

    pids, ret, surv = (np.asarray(arrays[k], dtype=np.float64) for k in ("patients", "returns", "survived"))
    up, p_ret, p_surv = _per_patient(pids, ret, surv)
    r, r_ci = mean_ci(p_ret)
    s, s_ci = mean_ci(p_surv)
    out: dict[str, Any] = {"return": r, "return_ci": list(r_ci), "survival": s, "survival_ci": list(s_ci),
                           "n_patients": int(len(up))}
    if ref is not None:
        rp, rr, rs = _per_patient(*(np.asarray(ref[k], dtype=np.float64) for k in ("patients", "returns", "survived")))
        pos = np.searchsorted(rp, up)
        if (pos >= len(rp)).any() or not np.array_equal(rp[np.minimum(pos, len(rp) - 1)], up):
            raise ValueError("the clinician was not evaluated on every patient of this policy")
        d, d_ci = mean_ci(p_ret - rr[pos])
        ds, ds_ci = mean_ci(p_surv - rs[pos])
        out.update(diff_return_vs_clinician=d, diff_return_ci=list(d_ci), diff_survival_vs_clinician=ds,
                   diff_survival_ci=list(ds_ci), clinician_return_same_patients=float(rr[pos].mean()),
                   clinician_survival_same_patients=float(rs[pos].mean()))
    return out


# what each stage added and what the agent adds over the rules it could have followed: (policy, compared with)
PAIRS = (("agent", "after_bc"), ("agent", "wm_planner_gl3"), ("agent", "wm_planner_k3"), ("agent", "guideline"),
         ("after_bc", "after_sft"), ("after_sft", "base_llm_wm"))


def per_patient_truth(arrays: dict[str, list]) -> dict[str, list]:
    """Each patient's mean true return and survival over its repeats, sorted by patient id."""
    up, ret, surv = _per_patient(*(np.asarray(arrays[k], dtype=np.float64) for k in ("patients", "returns", "survived")))
    return {"patients": up.astype(np.int64).tolist(), "returns": ret.tolist(), "survived": surv.tolist()}


def paired_difference(a: dict[str, list], b: dict[str, list]) -> dict[str, Any]:
    """True return and survival of policy a minus policy b on the patients both played (per-patient
    ``truth_arrays``), with 95% CIs over those patients."""
    from sepsis_rl.cohort.truth import mean_ci

    pa_, pb = np.asarray(a["patients"]), np.asarray(b["patients"])
    shared, ia, ib = np.intersect1d(pa_, pb, return_indices=True)
    if len(shared) < 2:
        raise ValueError(f"{len(shared)} shared patients: too few to pair")
    d, d_ci = mean_ci(np.asarray(a["returns"])[ia] - np.asarray(b["returns"])[ib])
    ds, ds_ci = mean_ci(np.asarray(a["survived"])[ia] - np.asarray(b["survived"])[ib])
    return {"n_patients": int(len(shared)), "diff_return": d, "diff_return_ci": list(d_ci),
            "diff_survival": ds, "diff_survival_ci": list(ds_ci)}


def paired_table(policies: dict[str, Any]) -> list[dict[str, Any]]:
    """``PAIRS`` whose two policies both have true outcomes."""
    rows = []
    for a, b in PAIRS:
        ta, tb = (policies.get(n, {}).get("truth_arrays") for n in (a, b))
        if ta and tb and len(np.intersect1d(ta["patients"], tb["patients"])) >= 2:
            rows.append({"policy": a, "vs": b, **paired_difference(ta, tb)})
    return rows


def _per_patient(pids: np.ndarray, ret: np.ndarray, surv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    up, inv = np.unique(pids, return_inverse=True)
    cnt = np.bincount(inv)
    return up, np.bincount(inv, weights=ret) / cnt, np.bincount(inv, weights=surv) / cnt


def _n_episodes(policies: dict[str, Any]) -> int:
    return max((p.get("n_ope_episodes", 0) for p in policies.values()), default=0)


def write_outputs(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    from sepsis_rl.eval.report import write_report

    return write_report(report, out_dir)


def write_partial(report: dict[str, Any], path: str | Path) -> None:
    """The policies finished so far (``report.json``'s schema), replaced atomically after each one."""
    import json

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)
    log.info("partial report (%d policies) -> %s", len(report["policies"]), path)
