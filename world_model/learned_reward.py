"""The reward of a cohort that brings its own per-step reward column, learned so the simulator can pay it.

A synthetic or formula-rewarded cohort stores the reward's coefficients in its spec and the simulator
recomputes that formula on simulated states. An imported cohort may instead name a ``reward_column``
(its spec then says ``{"column": NAME}``): the values are whatever the researcher's extract holds, so
there is no formula to recompute. Paying the default formula there would train the agent on a reward
the researcher never chose, silently. Instead, at world-model training time we fit:

* the intermediate reward as a ridge regression on the standardised current state and its change,
  ``r_t ~ w . [(s_t - mu) / sd, (s_{t+1} - s_t) / sd] + b`` over the train split's non-terminal rows
  (the formula rewards are functions of exactly this pair, so a linear model in it is the natural first
  order; its held-out R^2 on val is stored so a reader can judge the fit);
* the terminal rewards as the mean logged reward on the last rows of stays that ended in death and in
  survival (what the simulator pays when it draws or expects an ending).

The fit is stored in the world model's ``config.json`` and travels with the checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from sepsis_rl.cohort.spec import CohortSpec

RIDGE = 1e-3  # on standardised inputs: keeps the solve stable when features are collinear (SOFA and its parts)


def reward_column(spec: CohortSpec | None) -> str | None:
    """The cohort's own reward column, or None when its reward is the (configurable) formula."""
    if spec is None:
        return None
    col = spec.reward.get("column") if isinstance(spec.reward, dict) else None
    return str(col) if col else None


@dataclass(frozen=True)
class LearnedReward:
    """A linear intermediate reward in (state, change) plus the two terminal rewards; see the module docstring."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]  # 2F: current state, then its change
    bias: float
    terminal_die: float
    terminal_survive: float
    val_r2: float | None = None

    # ------------------------------------------------------------------------------------ use
    def shaping(self, cur: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """Intermediate reward of the transitions ``cur -> nxt`` ([B, F] each)."""
        return _design(cur, nxt, np.asarray(self.mean), np.asarray(self.scale)) @ np.asarray(self.weights) + self.bias

    def terminal(self, died: np.ndarray) -> np.ndarray:
        return np.where(np.asarray(died, dtype=bool), self.terminal_die, self.terminal_survive)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LearnedReward":
        return cls(**{k: tuple(float(x) for x in v) if isinstance(v, list) else v for k, v in d.items()})

    # ------------------------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, train: pa.Table, val: pa.Table | None, spec: CohortSpec) -> "LearnedReward":
        """Fit on ``train`` (rows sorted by episode and step, with ``reward``, ``done``, ``outcome``)."""
        column = reward_column(spec) or "reward"
        cur, nxt, r, last_r, last_died = _transitions(train, spec)
        if len(r) < 2:
            raise ValueError(f"too few non-terminal rows ({len(r)}) to learn the cohort's reward column {column!r}")
        if not last_died.any() or last_died.all():
            raise ValueError(f"the train split needs stays that end in death and in survival to learn the terminal "
                             f"values of the reward column {column!r}")
        mean, scale = cur.mean(axis=0), cur.std(axis=0)
        scale = np.where(scale > 1e-8, scale, 1.0)
        x = _design(cur, nxt, mean, scale)
        x_mean, r_mean = x.mean(axis=0), r.mean()
        xc = x - x_mean
        w = np.linalg.solve(xc.T @ xc + RIDGE * len(r) * np.eye(x.shape[1]), xc.T @ (r - r_mean))
        model = cls(tuple(mean.tolist()), tuple(scale.tolist()), tuple(w.tolist()), float(r_mean - x_mean @ w),
                    float(last_r[last_died].mean()), float(last_r[~last_died].mean()))
        if val is not None:
            vc, vn, vr, _, _ = _transitions(val, spec)
            if len(vr) >= 2 and vr.var() > 0:
                resid = vr - model.shaping(vc, vn)
                model = cls(**{**asdict(model), "val_r2": float(1.0 - resid.var() / vr.var())})
        return model


def _design(cur: np.ndarray, nxt: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    cur, nxt = np.asarray(cur, dtype=np.float64), np.asarray(nxt, dtype=np.float64)
    return np.concatenate([(cur - mean) / scale, (nxt - cur) / scale], axis=1)


def _transitions(table: pa.Table, spec: CohortSpec) -> tuple[np.ndarray, ...]:
    """(cur [N, F], next [N, F], reward [N]) of non-terminal rows; (reward, died) of each stay's last row."""
    feats = np.stack([table.column(n).to_numpy(zero_copy_only=False) for n in spec.feature_names], axis=1)
    feats = feats.astype(np.float64)
    ep = table.column("episode_id").to_numpy(zero_copy_only=False)
    reward = table.column("reward").to_numpy(zero_copy_only=False).astype(np.float64)
    outcome = table.column("outcome").to_numpy(zero_copy_only=False).astype(bool)
    last = np.ones(len(ep), dtype=bool)
    last[:-1] = ep[1:] != ep[:-1]
    inner = np.flatnonzero(~last)
    return feats[inner], feats[inner + 1], reward[inner], reward[last], outcome[last]
