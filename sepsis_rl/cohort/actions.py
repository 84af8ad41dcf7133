"""Action binning: 5 fluid x 5 vasopressor dose bins, as in the AI Clinician.

Bin 0 is "no drug"; bins 1-4 are the quartiles of the non-zero doses of the *training* split, so the
edges never peek at validation or test patients. Fluids are mL per 4-hour step; vasopressors are the
maximum norepinephrine-equivalent rate in the step, mcg/kg/min.
"""

from __future__ import annotations

import numpy as np

from sepsis_rl.cohort.spec import ActionBins

FLUID_UNIT = "mL/4h"
VASO_UNIT = "mcg/kg/min norepinephrine-equivalent"


def quartile_bins(drug: str, unit: str, train_doses: np.ndarray) -> ActionBins:
    """Bin edges from the quartiles of the non-zero training doses, with per-bin median doses."""
    doses = np.asarray(train_doses, dtype=np.float64)
    doses = doses[np.isfinite(doses)]
    nonzero = doses[doses > 0]
    if nonzero.size < 4:
        raise ValueError(
            f"cannot bin {drug} doses: the training split has {nonzero.size} non-zero doses, at least 4 are needed"
        )
    edges = tuple(float(q) for q in np.quantile(nonzero, [0.25, 0.5, 0.75]))
    provisional = ActionBins(drug, unit, edges, (0.0, 0.0, 0.0, 0.0, 0.0))
    return ActionBins(drug, unit, edges, representative_doses(provisional, doses))


def representative_doses(bins: ActionBins, doses: np.ndarray) -> tuple[float, float, float, float, float]:
    """Median dose within each bin (0 for bin 0; the bin's midpoint if a bin is empty)."""
    doses = np.asarray(doses, dtype=np.float64)
    b = bins.to_bin(doses)
    reps = [0.0]
    for k in range(1, 5):
        inside = doses[b == k]
        if inside.size:
            reps.append(float(np.median(inside)))
        else:
            lo, hi = bins.bin_range(k)
            reps.append(float(lo if not np.isfinite(hi) else (lo + hi) / 2))
    return tuple(reps)  # type: ignore[return-value]
