"""Classification and calibration metrics in plain numpy (no scikit-learn dependency).

* ``auroc``: the Mann-Whitney statistic with average ranks, so tied scores count one half.
* ``auprc``: average precision, sum over distinct thresholds of (recall step) x precision; tied scores
  form one threshold (the same convention as scikit-learn's ``average_precision_score``).
* ``ece``: expected calibration error with equal-width probability bins, weighted by bin size.

Each returns ``nan`` when it is undefined (e.g. only one class present), rather than raising, because
small evaluation splits legitimately hit that case; reports show it as null.
"""

from __future__ import annotations

import numpy as np


def _check(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.float64).reshape(-1)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks of ``s`` with ties given their average rank."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    new = np.ones(len(s), dtype=bool)
    new[1:] = sorted_s[1:] != sorted_s[:-1]
    group = np.cumsum(new) - 1
    starts = np.nonzero(new)[0]
    ends = np.append(starts[1:], len(s))
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1..end
    ranks = np.empty(len(s))
    ranks[order] = avg[group]
    return ranks


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties = 1/2."""
    y, s = _check(y, s)
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(s)
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision (area under the precision-recall step curve)."""
    y, s = _check(y, s)
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last_of_group = np.ones(len(ss), dtype=bool)
    last_of_group[:-1] = ss[1:] != ss[:-1]
    tp = np.cumsum(ys)[last_of_group]
    seen = (np.nonzero(last_of_group)[0] + 1).astype(np.float64)
    precision = tp / seen
    recall = tp / n_pos
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float((steps * precision).sum())


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error of probabilities ``p`` in [0, 1] over ``n_bins`` equal-width bins."""
    y, p = _check(y, p)
    if len(y) == 0:
        return float("nan")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must lie in [0, 1]")
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for k in np.unique(b):
        inside = b == k
        total += inside.mean() * abs(y[inside].mean() - p[inside].mean())
    return float(total)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
