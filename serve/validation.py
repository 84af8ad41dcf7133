"""Turning a client's charted history into the state array the agent was trained on, or a 4xx naming the field.

Checks, in order, each failing with the JSON path of the offending value: the history is a non-empty list
no longer than ``max_history`` steps; each step is an object whose keys are cohort features; each value is
a finite number (booleans are refused: a 0/1 feature is sent as a number) inside the feature's
*physiologically possible* range: the one the cohort's importer enforces (``FeatureSpec.plausible_range``,
defaults and their sources in ``sepsis_rl/cohort/features.py``), so the service accepts exactly what training
data could contain. These ranges are deliberately wide (they reject typos and unit mix-ups such as a
temperature in Fahrenheit or a lactate in mg/dL, not sick patients). A feature without a range (an imported
cohort's own names) is checked for being finite (binary ones for 0..1) only.

Missing features are imputed: carried forward from the previous step, else the training median, and
listed so the client can see what the recommendation did not see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sepsis_rl.cohort.features import PLAUSIBLE_RANGES
from sepsis_rl.cohort.spec import CohortSpec

class InputError(ValueError):
    """Bad request content: becomes a 422 with ``param`` = the JSON path of the offending value."""

    def __init__(self, message: str, param: str | None, code: str = "invalid_value"):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def feature_range(spec: CohortSpec, name: str) -> tuple[float, float] | None:
    """The feature's physiologically possible range: the cohort spec's own (``FeatureSpec.plausible_range``,
    the same the importer enforces), else the AI Clinician table for specs written before ranges existed;
    binary features are [0, 1]; None when nothing bounds it (only finiteness is checked then)."""
    f = spec.feature(name)
    if f.kind == "binary" or f.plausible_low is not None or f.plausible_high is not None:
        return f.plausible_range
    if name in PLAUSIBLE_RANGES:
        lo, hi, _ = PLAUSIBLE_RANGES[name]
        return (float(lo), float(hi))
    return None


def json_range(rng: tuple[float, float] | None) -> list[float | None] | None:
    """A range for JSON, which has no infinity: an open side is null."""
    return None if rng is None else [float(v) if math.isfinite(v) else None for v in rng]


@dataclass(frozen=True)
class ValidatedHistory:
    states: np.ndarray  # [T, F] real units, oldest first, no missing values
    imputed_features: list[str]  # spec order; features imputed at any step (static ones sent once are known)


class HistoryValidator:
    """Validates and imputes histories against one cohort spec."""

    def __init__(self, spec: CohortSpec, medians: Sequence[float], max_history: int):
        self.spec, self.max_history = spec, max_history
        self.names = spec.feature_names
        self.index = {n: i for i, n in enumerate(self.names)}
        self.medians = np.asarray(medians, dtype=np.float64)
        self.ranges = [feature_range(spec, n) for n in self.names]

    def validate(self, history: Any, param: str = "patient.history") -> ValidatedHistory:
        if not isinstance(history, list) or not history:
            raise InputError(f"{param} must be a non-empty list of per-step feature objects, oldest first", param,
                             "empty_history" if isinstance(history, list) else "invalid_type")
        if len(history) > self.max_history:
            raise InputError(f"{param} has {len(history)} steps; at most {self.max_history} are accepted", param,
                             "history_too_long")
        states = np.full((len(history), len(self.names)), np.nan)
        for t, step in enumerate(history):
            where = f"{param}[{t}]"
            if not isinstance(step, dict):
                raise InputError(f"{where} must be an object of feature name -> value", where, "invalid_type")
            for key, value in step.items():
                column = self._column(key, f"{where}.{key}")
                states[t, column] = self._number(key, value, f"{where}.{key}")
        return self._impute(states)

    def _column(self, key: str, where: str) -> int:
        if key not in self.index:
            raise InputError(f"{where}: unknown feature {key!r} (GET /v1/schema lists the {len(self.names)} features)",
                             where, "unknown_feature")
        return self.index[key]

    def _number(self, key: str, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: must be a number, got {type(value).__name__} {value!r}", where, "not_a_number")
        v = float(value)
        if not math.isfinite(v):
            raise InputError(f"{where}: must be finite, got {value!r}", where, "not_finite")
        rng = self.ranges[self.index[key]]
        if rng is not None and not rng[0] <= v <= rng[1]:
            unit = self.spec.feature(key).unit
            raise InputError(f"{where}: {v:g} is outside the physiologically possible range "
                             f"[{rng[0]:g}, {rng[1]:g}] {unit}", where, "out_of_range")
        return v

    def _impute(self, states: np.ndarray) -> ValidatedHistory:
        missing = np.isnan(states)
        # a static feature (age, weight) sent at any step is known, not imputed, at every step
        static = np.array([f.static for f in self.spec.features])
        known_static = static & ~missing.all(axis=0)
        imputed = [self.names[i] for i in np.flatnonzero(missing.any(axis=0) & ~known_static)]
        for i in np.flatnonzero(known_static):
            states[:, i] = np.where(missing[:, i], states[~missing[:, i], i][0], states[:, i])
        states[0] = np.where(np.isnan(states[0]), self.medians, states[0])
        for t in range(1, len(states)):
            states[t] = np.where(np.isnan(states[t]), states[t - 1], states[t])
        return ValidatedHistory(states, imputed)
