"""Cohort benchmark: synthesis patients/s and import rows/s (AI Clinician CSV and Parquet). Prints JSON.

    python benchmarks/cohort.py [--patients 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from sepsis_rl.cohort.features import AI_CLINICIAN_FEATURE_NAMES
from sepsis_rl.cohort.importers import import_cohort
from sepsis_rl.cohort.synth import synthesize, synthesize_cohort


def ai_clinician_file(n_patients: int, path: Path) -> int:
    cols, _ = synthesize(n_patients, seed=1, progress=False)
    rows = pd.DataFrame(cols)
    df = rows[list(AI_CLINICIAN_FEATURE_NAMES)].copy()
    df.insert(0, "bloc", rows["step"] + 1)
    df.insert(1, "icustayid", rows["episode_id"] + 200000)
    df["input_4hourly"], df["max_dose_vaso"], df["mortality_90d"] = rows["fluid_ml"], rows["vaso_dose"], rows["outcome"]
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return len(df)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--patients", type=int, default=10000)
    args = ap.parse_args()
    out: dict[str, float | int] = {"patients": args.patients}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        synthesize(args.patients, seed=0, progress=False)
        dt = time.perf_counter() - t0
        out["synth_in_memory_s"] = round(dt, 3)
        out["synth_patients_per_s"] = round(args.patients / dt, 1)
        t0 = time.perf_counter()
        synthesize_cohort(Path(tmp) / "synth", args.patients, seed=0, progress=False)
        dt = time.perf_counter() - t0
        out["synth_to_disk_s"] = round(dt, 3)
        out["synth_to_disk_patients_per_s"] = round(args.patients / dt, 1)
        for fmt in ("csv", "parquet"):
            src = Path(tmp) / f"ai_clinician.{fmt}"
            rows = ai_clinician_file(args.patients, src)
            t0 = time.perf_counter()
            import_cohort("ai-clinician", src, Path(tmp) / f"imported_{fmt}")
            dt = time.perf_counter() - t0
            out[f"import_{fmt}_rows"] = rows
            out[f"import_{fmt}_s"] = round(dt, 3)
            out[f"import_{fmt}_rows_per_s"] = round(rows / dt, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
