"""Evaluation benchmark, printing JSON: OPE time on synthetic transitions (and, later, policy decisions/s).

    PYTHONPATH=. python benchmarks/evaluate.py [--transitions 100000] [--threads 1] [--sections ope]

Sections are independent functions returning a dict; ``policies`` is the hook for decisions/s per policy
family (clinician, rules, planners, offline RL, LLMs), filled in by the evaluate driver's owner.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np


def synthetic_logged(n_transitions: int, seed: int = 0, n_features: int = 46):
    """Stays of 1-20 rows, a stochastic behaviour policy with exact propensities, sepsis-like reward scale."""
    from sepsis_rl.cohort.spec import N_ACTIONS
    from sepsis_rl.eval.logged import LoggedData

    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 21, size=n_transitions // 5 + 10)
    lens = lens[: np.searchsorted(np.cumsum(lens), n_transitions, side="right")]
    lens = np.r_[lens, n_transitions - lens.sum()] if lens.sum() < n_transitions else lens
    ep = np.repeat(np.arange(len(lens)), lens)
    n = len(ep)
    dones = np.zeros(n, bool)
    dones[np.cumsum(lens) - 1] = True
    behaviour = rng.dirichlet(np.ones(N_ACTIONS), n)
    actions = (behaviour.cumsum(1) < rng.random(n)[:, None]).sum(1).clip(0, N_ACTIONS - 1)
    data = LoggedData(spec=None, episode_ids=ep, steps=np.arange(n) - np.r_[0, np.cumsum(lens)[:-1]][ep],
                      states=rng.normal(size=(n, n_features)), actions=actions,
                      rewards=rng.normal(0, 0.5, n) + dones * rng.choice([-15.0, 15.0], n), dones=dones,
                      outcome=np.zeros(n, np.int64), behaviour_prob=behaviour[np.arange(n), actions])
    target = rng.dirichlet(np.ones(N_ACTIONS), n)
    return data, target


def bench_ope(n_transitions: int, threads: int) -> dict:
    """Wall time of FQE (fit + V(s_0)), the six IS-family estimators with 200 bootstrap resamples, and both."""
    from sepsis_rl.eval.fqe import FQEConfig, fit_fqe_logged, fqe_value_logged
    from sepsis_rl.eval.ope import Episodes, all_estimates

    data, target = synthetic_logged(n_transitions)
    t0, c0 = time.perf_counter(), time.process_time()
    model = fit_fqe_logged(data, target, FQEConfig(threads=threads))
    q = model.q_values(data.states, data.steps)
    fqe = fqe_value_logged(model, data, target)
    t1, c1 = time.perf_counter(), time.process_time()
    est = all_estimates(Episodes.from_logged(data, target, 0.99, q), n_boot=200)
    t2 = time.perf_counter()
    cfg = FQEConfig()
    return {
        "transitions": len(data), "episodes": int(data.dones.sum()), "bootstrap_resamples": 200,
        "fqe": {"iterations": cfg.iterations, "hidden": cfg.hidden, "batch_size": cfg.batch_size,
                "threads": threads, "seconds": round(t1 - t0, 2), "cpu_seconds": round(c1 - c0, 2)},
        "is_family_seconds": round(t2 - t1, 2), "estimators": sorted(est) + ["fqe"],
        "total_seconds": round(t2 - t0, 2), "fqe_value": round(fqe.value, 4),
    }


def bench_policies(n_decisions: int) -> dict:
    """Hook: decisions/s of each policy family (filled in with the evaluate driver's policies)."""
    return {}


SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "ope": lambda a: bench_ope(a.transitions, a.threads),
    "policies": lambda a: bench_policies(a.decisions),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transitions", type=int, default=100_000)
    ap.add_argument("--decisions", type=int, default=2_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sections", default="ope", help=f"comma-separated, of {','.join(SECTIONS)}")
    args = ap.parse_args()
    out = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "load_avg_1m": round(os.getloadavg()[0], 2)}}
    for name in args.sections.split(","):
        if name not in SECTIONS:
            raise SystemExit(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
        out[name] = SECTIONS[name](args)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
