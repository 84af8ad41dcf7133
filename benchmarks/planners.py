"""Reference policy table on a synthetic cohort: planners (world model and true simulator; 1- and 3-step;
all 25 actions and 3 clinician-like candidates), clinician, random, no treatment and the best and
largest-fluid constant regimens, as true values with paired 95% CIs (common random numbers).

    python benchmarks/planners.py --cohort C --world-model WM [--patients 1500] [--repeats 1]
    python benchmarks/planners.py --cohort C --world-model WM --study objectives [--only NAME ...]

Prints JSON: {"policies": {NAME: {"return", "return_ci", "survival", "survival_ci",
"diff_survival_vs_clinician", "diff_survival_ci", ...}}, "seconds": {NAME: s}}.

``--study objectives`` scores candidate RL objectives as world-model planners (issue 26): horizon 1, 3
and 8 steps (holding the candidate, or following the guideline after it: a whole-stay objective),
pessimism (expected return minus lambda x the ensemble's epistemic std), and candidate sets (the
guideline's dose and 2 or 4 neighbours, every action the logged behaviour takes with probability >= 5%,
all 25). Each is paired with ``wm_gl3_h1`` (the guided agent's procedure by code, ``wm_planner_gl3``) on
the same patients with common random numbers (``vs_gl3``). Truth only judges; nothing here trains.
"""

from __future__ import annotations

import argparse
import json
import time

from sepsis_rl.cohort.store import read_spec
from sepsis_rl.cohort.synth import GroundTruth, true_policy_values
from sepsis_rl.cohort.truth import true_summary
from sepsis_rl.eval.planners import TrueSimulatorPlanner, WorldModelPlanner
from sepsis_rl.eval.baselines.guideline import GuidelinePolicy
from sepsis_rl.eval.policies import ConstantPolicy, RandomPolicy, SyntheticClinician, no_treatment
from world_model.checkpoint import load_world_model


def objective_planners(model, guideline, clinician, penalties) -> dict:  # type: ignore[no-untyped-def]
    """The candidate objectives as planners: name -> policy."""
    wm = lambda mode, h, proposer, **kw: WorldModelPlanner(model, mode, h, proposer, **kw)  # noqa: E731
    out = {"guideline": guideline, "wm_gl3_h1": wm("guideline3", 1, guideline)}
    for h in (3, 8):
        out[f"wm_gl3_h{h}_hold"] = wm("guideline3", h, guideline)
        out[f"wm_gl3_h{h}_guideline"] = wm("guideline3", h, guideline, continuation=guideline)
    out["wm_gl5_h1"] = wm("guideline5", 1, guideline)
    out["wm_gl5_h3_guideline"] = wm("guideline5", 3, guideline, continuation=guideline)
    out["wm_support_h1"] = wm("support", 1, clinician)
    out["wm_all_h1"] = wm("all", 1, None)
    for lam in penalties:
        out[f"wm_gl5_h1_pess{lam:g}"] = wm("guideline5", 1, guideline, penalty=lam)
        out[f"wm_support_h1_pess{lam:g}"] = wm("support", 1, clinician, penalty=lam)
        out[f"wm_all_h1_pess{lam:g}"] = wm("all", 1, None, penalty=lam)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", required=True)
    ap.add_argument("--world-model", required=True)
    ap.add_argument("--patients", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--oracle-samples", type=int, default=16)
    ap.add_argument("--study", choices=["reference", "objectives"], default="reference")
    ap.add_argument("--penalties", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    ap.add_argument("--gamma", type=float, default=0.99)
    ap.add_argument("--only", nargs="+", default=None, help="objectives study: these planners (and the reference)")
    args = ap.parse_args()
    truth = GroundTruth.load(args.cohort)
    model = load_world_model(args.world_model)
    clin = SyntheticClinician(truth.simulator.feature_names, truth.cohort_seed)
    if args.study == "objectives":
        return study_objectives(args, model, clin)
    policies = {
        "clinician": clin, "random": RandomPolicy(), "no_treatment": no_treatment(),
        "const_F2V3": ConstantPolicy(13), "const_F4V0": ConstantPolicy(20),
        "wm_planner_1step_all25": WorldModelPlanner(model, "all", 1),
        "wm_planner_1step_k3": WorldModelPlanner(model, "clinician3", 1, clin),
        "wm_planner_3step_all25": WorldModelPlanner(model, "all", 3),
        "wm_planner_3step_k3": WorldModelPlanner(model, "clinician3", 3, clin),
        "oracle_1step_all25": TrueSimulatorPlanner(truth.simulator, "all", samples=args.oracle_samples),
        "oracle_1step_k3": TrueSimulatorPlanner(truth.simulator, "clinician3", clin, samples=args.oracle_samples),
    }
    runs, seconds = {}, {}
    for name, pol in policies.items():
        t0 = time.perf_counter()
        runs[name] = true_policy_values(args.cohort, {name: pol}, repeats=args.repeats, max_patients=args.patients)[name]
        seconds[name] = round(time.perf_counter() - t0, 1)
    table = {name: true_summary(tr, runs["clinician"]) for name, tr in runs.items()}
    print(json.dumps({"cohort": args.cohort, "world_model": args.world_model, "repeats": args.repeats,
                      "policies": table, "seconds": seconds}, indent=2))


def study_objectives(args: argparse.Namespace, model: object, clin: SyntheticClinician) -> None:
    from tqdm.auto import tqdm

    guideline = GuidelinePolicy(read_spec(args.cohort))
    planners = objective_planners(model, guideline, clin, args.penalties)
    names = ["wm_gl3_h1", *[n for n in planners if n != "wm_gl3_h1" and (not args.only or n in args.only)]]
    runs, seconds = {}, {}
    for name in tqdm([*names, "clinician"], desc="objectives", unit="policy"):
        pol = clin if name == "clinician" else planners[name]
        t0 = time.perf_counter()
        runs[name] = true_policy_values(args.cohort, {name: pol}, repeats=args.repeats, gamma=args.gamma,
                                        max_patients=args.patients)[name]
        seconds[name] = round(time.perf_counter() - t0, 1)
    table = {}
    for name, tr in runs.items():
        row = true_summary(tr, runs["clinician"])
        vs = true_summary(tr, runs["wm_gl3_h1"])
        row["vs_gl3"] = {"diff_return": vs["diff_return_vs_clinician"], "diff_return_ci": vs["diff_return_ci"],
                         "diff_survival": vs["diff_survival_vs_clinician"], "diff_survival_ci": vs["diff_survival_ci"]}
        table[name] = row
    best = max((n for n in table if n.startswith("wm_")), key=lambda n: table[n]["vs_gl3"]["diff_return"])
    print(json.dumps({"study": "objectives", "cohort": args.cohort, "world_model": args.world_model, "gamma": args.gamma,
                      "repeats": args.repeats, "reference": "wm_gl3_h1", "best": best,
                      "best_ci_above_zero": bool(best != "wm_gl3_h1" and table[best]["vs_gl3"]["diff_return_ci"][0] > 0),
                      "policies": table, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
