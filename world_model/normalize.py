"""Feature roles and standardisation, fitted on the training split only.

The world model sees every feature, but treats them differently:

* dynamic continuous features are predicted as a Gaussian over their *change* (delta), in a
  standardised space (optionally after ``log1p`` for heavy-tailed positive features, e.g. AST/ALT,
  lactate, whose raw scale would let a few outliers dominate the loss);
* binary features (e.g. ``mechvent``) stay 0/1 and are predicted as probabilities;
* static features (demographics) are inputs only and are carried forward unchanged.

Metrics always use the *linear* z-score (``raw_mean``/``raw_std``), whatever transform the model
uses internally, so models trained with and without ``log1p`` are compared on the same scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sepsis_rl.cohort.spec import CohortSpec

EPS = 1e-6


@dataclass(frozen=True)
class FeatureLayout:
    """Indices (into the spec's feature order) of each feature role."""

    names: tuple[str, ...]
    dynamic: tuple[int, ...]  # continuous, non-static: predicted as a delta Gaussian
    binary: tuple[int, ...]  # binary, non-static: predicted as a probability
    static: tuple[int, ...]  # carried unchanged

    @classmethod
    def from_spec(cls, spec: CohortSpec) -> "FeatureLayout":
        f = spec.features
        return cls(
            names=tuple(spec.feature_names),
            dynamic=tuple(i for i, s in enumerate(f) if s.kind == "continuous" and not s.static),
            binary=tuple(i for i, s in enumerate(f) if s.kind == "binary" and not s.static),
            static=tuple(i for i, s in enumerate(f) if s.static),
        )

    @property
    def n_features(self) -> int:
        return len(self.names)

    def dynamic_names(self) -> list[str]:
        return [self.names[i] for i in self.dynamic]


@dataclass(frozen=True)
class Normalizer:
    """Maps real units to the model's space and back; plain lists so it serialises to JSON."""

    log: tuple[bool, ...]  # log1p applied before standardising
    mean: tuple[float, ...]  # of the (possibly log1p'd) feature; 0 for binary
    std: tuple[float, ...]  # 1 for binary
    raw_mean: tuple[float, ...]  # linear z-score for metrics
    raw_std: tuple[float, ...]
    delta_mean: tuple[float, ...]  # of one-step changes of dynamic features, model space
    delta_std: tuple[float, ...]

    # ------------------------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls, x: np.ndarray, next_x: np.ndarray, layout: FeatureLayout,
        log_transform: bool = True, skew_threshold: float = 2.0,
    ) -> "Normalizer":
        """Fit on training rows ``x`` [N, F] and their successors ``next_x`` [N', F] (paired rows of x[:N'])."""
        x = np.asarray(x, dtype=np.float64)
        binary = np.zeros(x.shape[1], dtype=bool)
        binary[list(layout.binary)] = True
        log = np.zeros(x.shape[1], dtype=bool)
        if log_transform:
            for i in layout.dynamic:
                log[i] = _log_helps(x[:, i], skew_threshold)
        u = np.where(log, np.log1p(np.maximum(x, 0)), x)
        mean = np.where(binary, 0.0, u.mean(axis=0))
        std = np.where(binary, 1.0, np.maximum(u.std(axis=0), EPS))
        raw_std = np.maximum(x.std(axis=0), EPS)
        base = cls(tuple(map(bool, log)), _t(mean), _t(std), _t(x.mean(axis=0)), _t(raw_std), (), ())
        dyn = list(layout.dynamic)
        n = len(next_x)
        delta = base.encode(next_x)[:, dyn] - base.encode(x[:n])[:, dyn]
        d_mean = delta.mean(axis=0) if n else np.zeros(len(dyn))
        d_std = np.maximum(delta.std(axis=0), 1e-3) if n else np.ones(len(dyn))
        return cls(base.log, base.mean, base.std, base.raw_mean, base.raw_std, _t(d_mean), _t(d_std))

    # ---------------------------------------------------------------------------------- transforms
    def encode(self, x: np.ndarray) -> np.ndarray:
        """Real units -> model space (same shape, last axis = features)."""
        x = np.asarray(x, dtype=np.float64)
        log = np.asarray(self.log)
        u = x.copy()
        u[..., log] = np.log1p(np.maximum(x[..., log], 0))
        return (u - np.asarray(self.mean)) / np.asarray(self.std)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Model space -> real units."""
        u = np.asarray(z, dtype=np.float64) * np.asarray(self.std) + np.asarray(self.mean)
        log = np.asarray(self.log)
        u[..., log] = np.expm1(np.minimum(u[..., log], 50.0))
        return u

    def real_per_model_unit(self, z: np.ndarray) -> np.ndarray:
        """d(real)/d(model space) at ``z``: turns a model-space std into real units (delta method)."""
        u = np.asarray(z, dtype=np.float64) * np.asarray(self.std) + np.asarray(self.mean)
        log = np.asarray(self.log)
        grad = np.ones_like(u)
        grad[..., log] = np.exp(np.minimum(u[..., log], 50.0))
        return np.asarray(self.std) * grad

    def zscore(self, x: np.ndarray) -> np.ndarray:
        """Linear z-score of real values (the metric scale)."""
        return (np.asarray(x, dtype=np.float64) - np.asarray(self.raw_mean)) / np.asarray(self.raw_std)

    def to_dict(self) -> dict[str, list]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> "Normalizer":
        return cls(tuple(bool(v) for v in d["log"]), *(tuple(float(v) for v in d[k]) for k in (
            "mean", "std", "raw_mean", "raw_std", "delta_mean", "delta_std")))


def _t(a: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in a)


def _skew(col: np.ndarray) -> float:
    s = col.std()
    return 0.0 if s < EPS else float(((col - col.mean()) ** 3).mean() / s**3)


def _log_helps(col: np.ndarray, threshold: float) -> bool:
    """log1p a non-negative feature whose skew exceeds ``threshold`` and shrinks under the log."""
    if col.size == 0 or col.min() < 0:
        return False
    raw = abs(_skew(col))
    return raw > threshold and abs(_skew(np.log1p(col))) < raw
