"""Train every baseline on a cohort's train split, select on val, print JSON: training time and selection value.

    python benchmarks/baselines.py --cohort DIR [--preset default] [--names wd3qne cql ...]

``cpu_seconds_this_process`` excludes Ray worker processes (RLlib's data pipeline); on a shared machine the
wall time mostly measures the neighbours. The selection value is the default selector's score (val WIS with the cohort's behaviour propensities) of the
chosen checkpoint; greedy policies are scored softened with epsilon 0.1 (their configs' ``select_epsilon``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from sepsis_rl.eval.baselines import BASELINES, build_baseline
from sepsis_rl.eval.baselines.common import soften, wis_selector
from sepsis_rl.eval.logged import LoggedData
from sepsis_rl.eval.policy import DecisionBatch, Policy


class _Softened(Policy):
    def __init__(self, inner: Policy, epsilon: float) -> None:
        self.inner, self.epsilon = inner, epsilon

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        return soften(self.inner.action_probs(batch), self.epsilon)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cohort", required=True)
    ap.add_argument("--preset", default="default", choices=["tiny", "default"])
    ap.add_argument("--names", nargs="*", default=list(BASELINES))
    args = ap.parse_args()
    train, val = LoggedData.from_cohort(args.cohort, "train"), LoggedData.from_cohort(args.cohort, "val")
    out: dict[str, object] = {"cohort": args.cohort, "preset": args.preset, "train_rows": len(train),
                              "train_episodes": int(len(train.episode_starts())), "val_rows": len(val),
                              "val_clinician_mean_return_gamma0.99": float(val.returns(0.99).mean()),
                              "baselines": {}}
    for name in args.names:
        t0, c0 = time.perf_counter(), time.process_time()
        policy = build_baseline(name, train, val, args.preset)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        info = getattr(policy, "info", {})
        row = {"wall_seconds": round(wall, 1), "cpu_seconds_this_process": round(cpu, 1),
               "val_wis_softened_0.1": wis_selector(_Softened(policy, 0.1), val),
               "val_wis_as_returned": wis_selector(policy, val)}
        for k in ("selected_step", "val_selection_value", "val_history", "temperature", "val", "val_uncalibrated",
                  "expert_row_fraction"):
            if k in info:
                row[k] = info[k]
        out["baselines"][name] = row  # type: ignore[index]
        print(json.dumps({name: row}), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
