"""A cohort at a glance: size, mortality, the 5x5 action distribution and a per-feature summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sepsis_rl.cohort.spec import N_BINS
from sepsis_rl.cohort.store import read_cohort


def _split_summary(table: pa.Table) -> dict[str, Any]:
    ep = table.column("episode_id").to_numpy()
    done = table.column("done").to_numpy(zero_copy_only=False)
    outcome = table.column("outcome").to_numpy()
    n_ep = int(len(np.unique(ep)))
    return {
        "episodes": n_ep,
        "steps": int(table.num_rows),
        "mean_steps_per_episode": round(table.num_rows / max(n_ep, 1), 3),
        "mortality": round(float(outcome[done].mean()) if done.any() else float("nan"), 4),
    }


def describe_cohort(cohort_dir: str | Path) -> dict[str, Any]:
    cohort = read_cohort(cohort_dir)
    spec = cohort.spec
    table = pa.concat_tables(cohort.splits.values())
    fb = table.column("action_fluid").to_numpy().astype(np.int64)
    vb = table.column("action_vaso").to_numpy().astype(np.int64)
    counts = np.zeros((N_BINS, N_BINS), dtype=np.int64)
    np.add.at(counts, (fb, vb), 1)
    features = {}
    for f in spec.features:
        v = table.column(f.name).to_numpy(zero_copy_only=False).astype(np.float64)
        features[f.name] = {
            "unit": f.unit, "kind": f.kind, "static": f.static,
            "mean": round(float(np.nanmean(v)), 4), "std": round(float(np.nanstd(v)), 4),
            "min": round(float(np.nanmin(v)), 4), "p50": round(float(np.nanmedian(v)), 4),
            "max": round(float(np.nanmax(v)), 4), "missing": int(np.isnan(v).sum()),
        }
    returns = table.group_by("episode_id").aggregate([("reward", "sum")]).column("reward_sum").to_numpy()
    summary = {
        "path": str(cohort.path), "source": spec.source,
        **_split_summary(table),
        "splits": {name: _split_summary(t) for name, t in cohort.splits.items()},
        "mean_return": round(float(returns.mean()), 4),
        "action_distribution": {
            "rows": "fluid bin 0..4", "columns": "vasopressor bin 0..4",
            "fraction": (counts / max(counts.sum(), 1)).round(4).tolist(),
            "fluid_edges": list(spec.fluid.edges), "fluid_unit": spec.fluid.unit,
            "vaso_edges": list(spec.vaso.edges), "vaso_unit": spec.vaso.unit,
        },
        "n_features": len(spec.features),
        "features": features,
    }
    if "behaviour_prob" in table.column_names:
        summary["has_behaviour_prob"] = True
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`describe_cohort`."""
    lines = [
        f"cohort {s['path']} (source: {s['source']})",
        f"  episodes {s['episodes']}, steps {s['steps']} ({s['mean_steps_per_episode']} per episode), "
        f"mortality {s['mortality']:.1%}, mean return {s['mean_return']:.2f}",
        "  splits: " + ", ".join(f"{k} {v['episodes']} episodes / {v['steps']} steps" for k, v in s["splits"].items()),
        "",
        f"  action distribution (% of steps; rows = fluid bin, edges {s['action_distribution']['fluid_edges']} "
        f"{s['action_distribution']['fluid_unit']}; columns = vasopressor bin, edges "
        f"{s['action_distribution']['vaso_edges']} {s['action_distribution']['vaso_unit']})",
        "          " + "".join(f"  vaso {j}" for j in range(N_BINS)),
    ]
    for i, row in enumerate(s["action_distribution"]["fraction"]):
        lines.append(f"  fluid {i} " + "".join(f"{100 * v:8.1f}" for v in row))
    lines += ["", f"  {s['n_features']} features:",
              f"  {'name':20s} {'unit':22s} {'mean':>10s} {'std':>10s} {'min':>10s} {'max':>10s} missing"]
    for name, f in s["features"].items():
        tag = " (static)" if f["static"] else ""
        lines.append(f"  {name:20s} {f['unit'][:22]:22s} {f['mean']:10.3g} {f['std']:10.3g} {f['min']:10.3g} "
                     f"{f['max']:10.3g} {f['missing']}{tag}")
    return "\n".join(lines)
