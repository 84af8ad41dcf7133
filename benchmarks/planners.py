"""Reference policy table on a synthetic cohort: planners (world model and true simulator; 1- and 3-step;
all 25 actions and 3 clinician-like candidates), clinician, random, no treatment and the best and
largest-fluid constant regimens, as true values with paired 95% CIs (common random numbers).

    python benchmarks/planners.py --cohort C --world-model WM [--patients 1500] [--repeats 1]

Prints JSON: {"policies": {NAME: {"return", "return_ci", "survival", "survival_ci",
"diff_survival_vs_clinician", "diff_survival_ci", ...}}, "seconds": {NAME: s}}.
"""

from __future__ import annotations

import argparse
import json
import time

from sepsis_rl.cohort.synth import GroundTruth, true_policy_values
from sepsis_rl.cohort.truth import true_summary
from sepsis_rl.eval.planners import TrueSimulatorPlanner, WorldModelPlanner
from sepsis_rl.eval.policies import ConstantPolicy, RandomPolicy, SyntheticClinician, no_treatment
from world_model.checkpoint import load_world_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", required=True)
    ap.add_argument("--world-model", required=True)
    ap.add_argument("--patients", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--oracle-samples", type=int, default=16)
    args = ap.parse_args()
    truth = GroundTruth.load(args.cohort)
    model = load_world_model(args.world_model)
    clin = SyntheticClinician(truth.simulator.feature_names, truth.cohort_seed)
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


if __name__ == "__main__":
    main()
