"""The clinical sanity table: anyone can check the judge.

True return and survival (95% CIs) of the 25 constant regimens, the clinician, a uniformly random policy
and no treatment, on the same test patients with common random numbers. A trustworthy ground truth has no
constant regimen reaching the clinicians' survival and no treatment below every moderate regimen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sepsis_rl.cohort.spec import N_ACTIONS
from sepsis_rl.cohort.synth import GroundTruth, true_policy_values
from sepsis_rl.cohort.truth import true_summary


def sanity_policies(cohort_dir: str | Path) -> dict[str, Any]:
    from sepsis_rl.eval.policies import ConstantPolicy, RandomPolicy, SyntheticClinician, no_treatment

    truth = GroundTruth.load(cohort_dir)
    pols: dict[str, Any] = {"clinician": SyntheticClinician(truth.simulator.feature_names, truth.cohort_seed),
                            "random": RandomPolicy(), "no_treatment": no_treatment()}
    for a in range(N_ACTIONS):
        c = ConstantPolicy(a)
        pols[c.name] = c
    return pols


def sanity_table(cohort_dir: str | Path, patients: int | None = None, repeats: int = 1, seed: int | None = None,
                 split: str = "test") -> dict[str, Any]:
    """``{"policies": {NAME: {"return", "return_ci", "survival", "survival_ci", ...}}}`` (undiscounted)."""
    runs = true_policy_values(cohort_dir, sanity_policies(cohort_dir), split=split, repeats=repeats, seed=seed,
                              max_patients=patients)
    ref = runs["clinician"]
    table = {name: true_summary(tr, ref) for name, tr in runs.items()}
    n = next(iter(table.values()))["n_patients"]
    return {"cohort": str(cohort_dir), "split": split, "n_patients": n, "repeats": repeats, "gamma": 1.0,
            "policies": dict(sorted(table.items(), key=lambda kv: -float(kv[1]["survival"])))}


def render_markdown(table: dict[str, Any]) -> str:
    lines = [f"True value on {table['n_patients']} {table['split']} patients x {table['repeats']} repeat(s), "
             "common random numbers, undiscounted return (cohort reward), survival = alive at the outcome window.", "",
             "| policy | true return (95% CI) | true survival (95% CI) | survival vs clinician (paired 95% CI) |",
             "|---|---|---|---|"]
    for name, r in table["policies"].items():
        lo, hi = r["return_ci"]
        slo, shi = r["survival_ci"]
        dlo, dhi = r["diff_survival_ci"]
        lines.append(f"| {name} | {r['return']:.2f} ({lo:.2f}, {hi:.2f}) | {r['survival']:.3f} ({slo:.3f}, {shi:.3f}) | "
                     f"{r['diff_survival_vs_clinician']:+.3f} ({dlo:+.3f}, {dhi:+.3f}) |")
    return "\n".join(lines)
