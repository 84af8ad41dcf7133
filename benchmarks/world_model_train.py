"""World-model benchmark: train each architecture with a preset, evaluate on the test split, print JSON.

    python benchmarks/world_model_train.py [--patients 10000] [--preset cpu] [--archs mlp gru] [--out DIR]

Synthesises a cohort (or uses ``--cohort``), then for each architecture reports the training wall
time, epochs, and the headline metrics of ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sepsis_rl.cohort.synth import synthesize_cohort
from world_model.checkpoint import save_world_model
from world_model.evaluate import EvalConfig, evaluate_world_model, write_metrics
from world_model.presets import get_preset
from world_model.train import train_world_model

HEADLINE = ("state_mae", "persistence_mae", "state_mae_reduction_vs_persistence", "vent_auroc", "outcome_auroc",
            "outcome_auprc", "outcome_ece", "outcome_auroc_cumulative", "counterfactual_state_mae",
            "counterfactual_persistence_mae", "fresh_factual_state_mae", "counterfactual_effect_mae",
            "counterfactual_zero_effect_mae", "open_loop_mae", "open_loop_persistence_mae")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", help="existing cohort folder (default: synthesise one)")
    ap.add_argument("--patients", type=int, default=10000)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--archs", nargs="+", default=["mlp", "gru"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="keep models and metrics here (default: a temporary folder)")
    args = ap.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="wm-bench-"))
    cohort = Path(args.cohort) if args.cohort else synthesize_cohort(work / "cohort", args.patients, args.seed,
                                                                    overwrite=True, progress=False)
    report: dict = {"cohort": str(cohort), "preset": args.preset, "runs": {}}
    for arch in args.archs:
        t0 = time.perf_counter()
        result = train_world_model(cohort, get_preset(args.preset, arch=arch, seed=args.seed, progress=False))
        train_s = time.perf_counter() - t0
        model_dir = save_world_model(result.model, work / f"model-{arch}", info={"train": result.summary()},
                                     overwrite=True)
        t1 = time.perf_counter()
        metrics = evaluate_world_model(result.model, cohort, EvalConfig(seed=args.seed))
        write_metrics(model_dir / "metrics.json", metrics)
        report["runs"][arch] = {
            "train_seconds": round(train_s, 1), "evaluate_seconds": round(time.perf_counter() - t1, 1),
            "epochs": len(result.history), "stopped": result.stopped,
            **{k: metrics.get(k) for k in HEADLINE},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
