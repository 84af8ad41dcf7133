"""The evaluation report: report.json -> report.md and PNG plots, plus how well each estimator met the truth.

The report dict (``report.json``) holds, per policy, off-policy estimates (``ope``: value, 95% CI, ESS),
the ground-truth value (``true``, synthetic cohorts only), safety rates, the 5x5 action table and dose by
state. Estimates are compared to the truth's *discounted* return at the report's gamma
(``true["discounted_return"]`` when the driver reports it, else ``true["return"]``, which is then assumed
to use the same gamma). Files are written to a temporary folder and moved into place at the end, so a
failure leaves no half-written report.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ESTIMATOR_ORDER = ("is", "wis", "pdis", "wpdis", "dr", "wdr", "fqe", "wm")
ESTIMATOR_LABELS = {"is": "IS", "wis": "WIS", "pdis": "PDIS", "wpdis": "WPDIS", "dr": "DR", "wdr": "WDR",
                    "fqe": "FQE", "wm": "WM (in-model)"}
SAFETY_KEYS = ("g1", "g2", "underdosing", "overdosing")
PLOTS = ("ope_estimates.png", "ope_vs_truth.png", "action_heatmaps.png", "dose_by_state.png")

MEANING = """\
**What the numbers mean.** *True* values come from the ground-truth patient simulator: each policy treats
the same test patients from their admission state, with the same random numbers, for the whole stay; they
are the policy's real value (returns on the cohort reward's scale, survival as a fraction) and the paired
differences to the clinician are the comparison to read first. *Off-policy estimates* (IS, WIS, PDIS,
WPDIS, DR, WDR, FQE) use only the logged test trajectories of the clinicians and the policy's
probabilities at the logged states; they are discounted returns at the report's gamma with a 95%
bootstrap CI over patients and an effective sample size (ESS; a small ESS means a few patients carry the
estimate and it cannot be trusted, whatever its CI). IS/PDIS/DR are unbiased given exact propensities but
noisy; WIS/WPDIS/WDR trade bias for variance; FQE and DR depend on the fitted Q-model. *WM (in-model)* is
the policy's value inside the learned world model: an agent that consults the world model can exploit
its errors, so it is never the headline where the truth exists. On imported (real) cohorts there is no
truth: only the estimates remain, and they cannot reveal their own bias.
Safety rates are over each rule's at-risk decisions: G1/G2 are adherence (higher is better), under- and
over-dosing are violations (lower is better); see `sepsis_rl/eval/safety.py` for the definitions.
"""


# ---- numbers --------------------------------------------------------------------------------------------

def _truth(entry: dict) -> float | None:
    true = entry.get("true")
    if not true:
        return None
    value = true.get("discounted_return", true.get("return"))
    return None if value is None else float(value)


def _estimates(entry: dict) -> dict[str, dict]:
    return {k: v for k, v in (entry.get("ope") or {}).items() if v and v.get("value") is not None}


def _ok(entry: dict) -> bool:
    return entry.get("status", "ok") == "ok"


def wm_gap(entry: dict) -> float | None:
    """World-model (in-model) value minus the true value: how much the policy gains from world-model error."""
    wm, truth = _estimates(entry).get("wm"), _truth(entry)
    return None if wm is None or truth is None else float(wm["value"]) - truth


def estimator_coverage(report: dict) -> dict[str, dict[str, Any]]:
    """Per estimator: over policies with a truth, how often the 95% CI contained the true value."""
    out: dict[str, dict[str, Any]] = {}
    for name in ESTIMATOR_ORDER:
        covered = n = 0
        for entry in report.get("policies", {}).values():
            est, truth = _estimates(entry).get(name), _truth(entry)
            if not _ok(entry) or est is None or truth is None or None in (est.get("ci") or [None]):
                continue
            lo, hi = est["ci"]
            n += 1
            covered += int(lo <= truth <= hi)
        if n:
            out[name] = {"covered": covered, "n": n, "rate": covered / n}
    return out


def estimator_errors(report: dict) -> dict[str, dict[str, Any]]:
    """Per estimator over policies with a truth: mean error (bias), mean absolute error, RMSE (estimate - true)."""
    out: dict[str, dict[str, Any]] = {}
    for name in ESTIMATOR_ORDER:
        errs = [float(_estimates(e)[name]["value"]) - _truth(e) for e in report.get("policies", {}).values()
                if _ok(e) and name in _estimates(e) and _truth(e) is not None]
        if errs:
            a = np.asarray(errs)
            out[name] = {"n": len(a), "bias": float(a.mean()), "mae": float(np.abs(a).mean()),
                         "rmse": float(np.sqrt((a * a).mean()))}
    return out


# ---- markdown -------------------------------------------------------------------------------------------

def _num(x: Any, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def _with_ci(value: Any, ci: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if not ci or None in ci:
        return _num(value, digits)
    return f"{_num(value, digits)} [{_num(ci[0], digits)}, {_num(ci[1], digits)}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def render_markdown(report: dict) -> str:
    policies: dict[str, dict] = report.get("policies", {})
    present = [e for e in ESTIMATOR_ORDER if any(e in _estimates(p) for p in policies.values())]
    lines = ["# Evaluation report", ""]
    for key in ("cohort", "split", "gamma", "n_episodes"):
        if key in report:
            lines.append(f"- **{key}**: {report[key]}")
    for key, value in report.items():
        if key not in ("cohort", "split", "gamma", "n_episodes", "policies", "paired"):
            lines.append(f"- **{key}**: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    lines += ["", MEANING, "## Off-policy estimates (logged test trajectories)", "",
              "Each cell: estimate [95% CI] (ESS). The true discounted return is repeated for comparison.", ""]
    rows = []
    for name, p in policies.items():
        est = _estimates(p)
        cells = [f"{_with_ci(est[e]['value'], est[e].get('ci'))} ({_num(est[e].get('ess'), 0)})" if e in est else "–"
                 for e in present]
        rows.append([name, *cells, _num(_truth(p))])
    lines += _table(["policy", *(ESTIMATOR_LABELS[e] for e in present), "true"], rows)

    lines += ["", "## True value (ground-truth simulator, paired with the clinician)", ""]
    rows = []
    for name, p in policies.items():
        t = p.get("true")
        if not t:
            continue
        rows.append([name, _with_ci(t.get("return"), t.get("return_ci")),
                     _with_ci(t.get("survival"), t.get("survival_ci"), 3),
                     _with_ci(t.get("diff_return_vs_clinician"), t.get("diff_return_ci")),
                     _with_ci(t.get("diff_survival_vs_clinician"), t.get("diff_survival_ci"), 3),
                     str(t.get("n_patients", "–")), _num(wm_gap(p))])
    lines += _table(["policy", "return", "survival", "Δ return vs clinician", "Δ survival vs clinician",
                     "patients", "WM − true"], rows) if rows else ["No ground truth for this cohort."]
    if rows:
        lines += ["", ("\"WM − true\": the world model's value of the policy minus its true discounted value; a "
                       "large positive gap for an agent that consults the world model means it exploits its errors.")]

    if report.get("paired"):
        lines += ["", "## Paired true differences (the same patients, common random numbers)", ""]
        lines += _table(["policy", "vs", "Δ return", "Δ survival", "patients"],
                        [[r["policy"], r["vs"], _with_ci(r["diff_return"], r["diff_return_ci"]),
                          _with_ci(r["diff_survival"], r["diff_survival_ci"], 3), str(r["n_patients"])]
                         for r in report["paired"]])

    lines += ["", "## Safety (policy's choices on the logged test states)", ""]
    rows = []
    for name, p in policies.items():
        s = p.get("safety") or {}
        st = p.get("safety_true") or {}
        rows.append([name, *(_num(s.get(k), 3) for k in SAFETY_KEYS), *(_num(st.get(k), 3) for k in SAFETY_KEYS),
                     str(p.get("n_decisions", "–"))])
    lines += _table(["policy", "G1", "G2", "under", "over", "G1 (own)", "G2 (own)", "under (own)", "over (own)",
                     "decisions"], rows)
    lines += ["", "\"(own)\": on the policy's own ground-truth trajectories, where reported."]

    coverage, errors = estimator_coverage(report), estimator_errors(report)
    if coverage:
        lines += ["", "## Estimators against the truth", ""]
        rows = [[ESTIMATOR_LABELS[e], f"{coverage[e]['covered']}/{coverage[e]['n']}",
                 _num(errors[e]["bias"]), _num(errors[e]["mae"]), _num(errors[e]["rmse"])]
                for e in ESTIMATOR_ORDER if e in coverage]
        lines += _table(["estimator", "CI contains truth", "bias", "MAE", "RMSE"], rows)

    failed = [(n, p.get("error")) for n, p in policies.items() if not _ok(p)]
    if failed:
        lines += ["", "## Failed policies", ""] + [f"- **{n}**: {err}" for n, err in failed]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in PLOTS]
    return "\n".join(lines) + "\n"


# ---- plots ----------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_estimates(report: dict, path: Path) -> None:
    """Each policy: every estimator's value and CI side by side, the true value as a black bar."""
    plt = _pyplot()
    policies = {n: p for n, p in report.get("policies", {}).items() if _ok(p)}
    names = list(policies)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names) + 2), 4.5))
    offsets = np.linspace(-0.35, 0.35, len(ESTIMATOR_ORDER))
    shown = []
    for k, est_name in enumerate(ESTIMATOR_ORDER):
        xs, ys, lo, hi = [], [], [], []
        for i, n in enumerate(names):
            e = _estimates(policies[n]).get(est_name)
            if e is None:
                continue
            ci = e.get("ci") or [None, None]
            xs.append(i + offsets[k])
            ys.append(e["value"])
            # a percentile-bootstrap CI of a ratio estimator (WIS on a few stays) can exclude its point value:
            # the whisker on that side is then empty, the point is still drawn where it is
            lo.append(max(e["value"] - ci[0], 0.0) if ci[0] is not None else 0.0)
            hi.append(max(ci[1] - e["value"], 0.0) if ci[1] is not None else 0.0)
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", ms=4, capsize=2, label=ESTIMATOR_LABELS[est_name])
            shown.extend(ys)
    for i, n in enumerate(names):
        t = _truth(policies[n])
        if t is not None:
            ax.hlines(t, i - 0.45, i + 0.45, colors="black", linewidth=2.5, label="true" if i == 0 else None)
            shown.append(t)
    if shown:  # IS can be orders of magnitude off: scale to the point values, clip the whiskers
        lo, hi = float(np.percentile(shown, 2)), float(np.percentile(shown, 98))
        pad = 0.25 * max(hi - lo, 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(f"discounted return (gamma={report.get('gamma')})")
    ax.set_title("Off-policy estimates (95% CI) and the true value")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_vs_truth(report: dict, path: Path) -> None:
    """Estimate against truth, one colour per estimator; the diagonal is a perfect estimator."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    allv: list[float] = []
    for est_name in ESTIMATOR_ORDER:
        pts = [(_truth(p), _estimates(p)[est_name]) for p in report.get("policies", {}).values()
               if _ok(p) and _truth(p) is not None and est_name in _estimates(p)]
        if not pts:
            continue
        xs = [t for t, _ in pts]
        ys = [e["value"] for _, e in pts]
        ax.scatter(xs, ys, s=22, label=ESTIMATOR_LABELS[est_name])
        allv += xs + ys
    if allv:
        lo, hi = float(np.percentile(allv, 2)), float(np.percentile(allv, 98))
        pad = 0.1 * max(hi - lo, 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", linewidth=1)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.legend(fontsize=7)
    ax.set_xlabel("true discounted return")
    ax.set_ylabel("estimate")
    ax.set_title("Estimators against the truth")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_action_heatmaps(report: dict, path: Path) -> None:
    """Top: each policy's share of decisions per (fluid, vasopressor) bin; bottom: minus the clinicians'."""
    plt = _pyplot()
    tables = {n: np.asarray(p["action_table"], float) for n, p in report.get("policies", {}).items()
              if _ok(p) and p.get("action_table") is not None}
    names = list(tables) or ["(none)"]
    ref = tables.get("clinician")
    fig, axes = plt.subplots(2, len(names), figsize=(2.4 * len(names) + 1, 5), squeeze=False)
    for j, n in enumerate(names):
        top, bottom = axes[0, j], axes[1, j]
        if n in tables:
            top.imshow(tables[n], cmap="viridis", vmin=0, vmax=max(0.05, max(t.max() for t in tables.values())))
            if ref is not None:
                d = tables[n] - ref
                bottom.imshow(d, cmap="RdBu_r", vmin=-0.3, vmax=0.3)
                for (r, c), v in np.ndenumerate(d):
                    if abs(v) >= 0.05:
                        bottom.text(c, r, f"{v:+.2f}", ha="center", va="center", fontsize=5)
        top.set_title(n, fontsize=8)
        for ax in (top, bottom):
            ax.set_xticks(range(5))
            ax.set_yticks(range(5))
            ax.tick_params(labelsize=6)
        top.set_xlabel("vaso bin", fontsize=7)
        bottom.set_xlabel("vaso bin", fontsize=7)
    axes[0, 0].set_ylabel("fluid bin", fontsize=7)
    axes[1, 0].set_ylabel("minus clinician", fontsize=7)
    fig.suptitle("Action distribution on the logged test states")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dose_by_state(report: dict, path: Path) -> None:
    """Mean fluid and vasopressor bin by MAP band and lactate band, one line per policy."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    for n, p in report.get("policies", {}).items():
        d = p.get("dose_by_state") if _ok(p) else None
        if not d:
            continue
        for col, (key, labels) in enumerate((("map", d["map_bands"]), ("lactate", d["lactate_bands"]))):
            for row, drug in enumerate(("fluid", "vaso")):
                ys = [np.nan if v is None else v for v in d[key][drug]]
                axes[row, col].plot(range(len(labels)), ys, marker="o", label=n,
                                    linewidth=2.5 if n == "clinician" else 1.2)
                axes[row, col].set_xticks(range(len(labels)), labels)
    for row, drug in enumerate(("fluid", "vasopressor")):
        axes[row, 0].set_ylabel(f"mean {drug} bin")
    axes[1, 0].set_xlabel("MAP (mmHg)")
    axes[1, 1].set_xlabel("lactate (mmol/L)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="upper right")
    fig.suptitle("Dose against MAP and lactate (logged test states)")
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out_dir: str | Path, write_json: bool = True) -> list[Path]:
    """Write report.json (optional), report.md and the PNG plots into ``out_dir``; all or nothing."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        if write_json:
            (tmp / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))
        (tmp / "report.md").write_text(render_markdown(report))
        for name, fn in zip(PLOTS, (plot_estimates, plot_vs_truth, plot_action_heatmaps, plot_dose_by_state)):
            fn(report, tmp / name)
        written = []
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
            written.append(out / f.name)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
