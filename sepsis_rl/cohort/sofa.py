"""SOFA and SIRS scores from their components (Vincent et al. 1996; Bone et al. 1992), vectorised.

Used by the synthetic simulator to chart the scores it shows, and by anyone who needs them from raw
values. Vasopressor doses are norepinephrine-equivalent mcg/kg/min; urine output is mL per 4 hours
(scaled to a day for the renal criterion).
"""

from __future__ import annotations

import numpy as np


def _steps(values: np.ndarray, thresholds: list[float], descending: bool) -> np.ndarray:
    """Points = number of thresholds crossed (values below them if descending, at/above if ascending)."""
    values = np.asarray(values, dtype=np.float64)
    pts = np.zeros(values.shape, dtype=np.int64)
    for t in thresholds:
        pts += (values < t) if descending else (values >= t)
    return pts


def sofa_respiration(pf_ratio: np.ndarray, ventilated: np.ndarray) -> np.ndarray:
    pts = _steps(pf_ratio, [400, 300, 200, 100], descending=True)
    return np.where(np.asarray(ventilated) > 0.5, pts, np.minimum(pts, 2))


def sofa_coagulation(platelets: np.ndarray) -> np.ndarray:
    return _steps(platelets, [150, 100, 50, 20], descending=True)


def sofa_liver(bilirubin_mg_dl: np.ndarray) -> np.ndarray:
    return _steps(bilirubin_mg_dl, [1.2, 2.0, 6.0, 12.0], descending=False)


def sofa_cardiovascular(map_mmhg: np.ndarray, norepi_mcg_kg_min: np.ndarray) -> np.ndarray:
    d = np.asarray(norepi_mcg_kg_min, dtype=np.float64)
    low_map = (np.asarray(map_mmhg) < 70).astype(np.int64)
    return np.where(d > 0.1, 4, np.where(d > 0, 3, low_map))


def sofa_cns(gcs: np.ndarray) -> np.ndarray:
    return _steps(gcs, [15, 13, 10, 6], descending=True)


def sofa_renal(creatinine_mg_dl: np.ndarray, urine_ml_4h: np.ndarray) -> np.ndarray:
    by_creat = _steps(creatinine_mg_dl, [1.2, 2.0, 3.5, 5.0], descending=False)
    daily = np.asarray(urine_ml_4h, dtype=np.float64) * 6.0
    by_urine = np.where(daily < 200, 4, np.where(daily < 500, 3, 0))
    return np.maximum(by_creat, by_urine)


def sofa_score(
    pf_ratio: np.ndarray,
    ventilated: np.ndarray,
    platelets: np.ndarray,
    bilirubin: np.ndarray,
    map_mmhg: np.ndarray,
    norepi: np.ndarray,
    gcs: np.ndarray,
    creatinine: np.ndarray,
    urine_ml_4h: np.ndarray,
) -> np.ndarray:
    """Total SOFA, 0..24."""
    return (
        sofa_respiration(pf_ratio, ventilated)
        + sofa_coagulation(platelets)
        + sofa_liver(bilirubin)
        + sofa_cardiovascular(map_mmhg, norepi)
        + sofa_cns(gcs)
        + sofa_renal(creatinine, urine_ml_4h)
    )


def sirs_count(temp_c: np.ndarray, hr: np.ndarray, rr: np.ndarray, paco2: np.ndarray, wbc: np.ndarray) -> np.ndarray:
    """Number of SIRS criteria met, 0..4."""
    temp = (np.asarray(temp_c) > 38.0) | (np.asarray(temp_c) < 36.0)
    heart = np.asarray(hr) > 90
    resp = (np.asarray(rr) > 20) | (np.asarray(paco2) < 32)
    white = (np.asarray(wbc) > 12) | (np.asarray(wbc) < 4)
    return temp.astype(np.int64) + heart + resp + white
