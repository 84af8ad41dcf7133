"""Turning a client's charted history into the state array the agent was trained on, or a 4xx naming the field.

Checks, in order, each failing with the JSON path of the offending value: the history is a non-empty list
no longer than ``max_history`` steps; each step is an object whose keys are cohort features; each value is
a finite number (booleans are refused: a 0/1 feature is sent as a number) inside the feature's
*physiologically possible* range. These ranges are deliberately wide (they reject typos and unit
mix-ups such as a temperature in Fahrenheit or a lactate in mg/dL, not sick patients); the cohort spec
carries only *normal* ranges, so the table lives here. Sources: definitions (GCS 3-15, SOFA 0-24, SIRS
0-4, SpO2 and fractions), survival limits reported in the critical-care literature (arterial pH 6.3-8.0,
core temperature 15-46 degC, serum sodium 90-200 mmol/L), and the outlier cut-offs of the AI Clinician
MIMIC extraction (Komorowski et al., Nat Med 2018) for the remaining vitals and labs. A feature outside the
table (an imported cohort's own names) is checked for being finite (binary ones for 0..1) only.

Missing features are imputed: carried forward from the previous step, else the training median, and
listed so the client can see what the recommendation did not see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sepsis_rl.cohort.spec import CohortSpec

# feature -> (lowest, highest) physiologically possible value, in the cohort's units (see module docstring)
PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    "gender": (0, 1), "age": (0, 120), "Weight_kg": (1, 500), "re_admission": (0, 1), "elixhauser": (-20, 90),
    "GCS": (3, 15), "HR": (0, 350), "SysBP": (0, 350), "MeanBP": (0, 300), "DiaBP": (0, 300), "RR": (0, 100),
    "SpO2": (0, 100), "Temp_C": (15, 46), "FiO2_1": (0.2, 1.0),
    "Potassium": (0.5, 15), "Sodium": (90, 200), "Chloride": (50, 160), "Glucose": (1, 3000), "BUN": (0, 350),
    "Creatinine": (0, 30), "Magnesium": (0, 20), "Calcium": (0, 30), "SGOT": (0, 50000), "SGPT": (0, 50000),
    "Total_bili": (0, 100), "Albumin": (0, 10), "Hb": (0, 25), "WBC_count": (0, 1000), "Platelets_count": (0, 3000),
    "PTT": (0, 250), "PT": (0, 200), "INR": (0, 30), "Arterial_pH": (6.3, 8.0), "paO2": (0, 800), "paCO2": (0, 250),
    "Arterial_BE": (-50, 50), "HCO3": (0, 80), "Arterial_lactate": (0, 40), "mechvent": (0, 1),
    "PaO2_FiO2": (0, 4000), "input_total": (0, 1e6), "output_total": (0, 1e6), "output_4hourly": (0, 20000),
    "cumulated_balance": (-1e6, 1e6), "SOFA": (0, 24), "SIRS": (0, 4), "Shock_Index": (0, 20),
}


class InputError(ValueError):
    """Bad request content: becomes a 422 with ``param`` = the JSON path of the offending value."""

    def __init__(self, message: str, param: str | None, code: str = "invalid_value"):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def feature_range(spec: CohortSpec, name: str) -> tuple[float, float] | None:
    if name in PLAUSIBLE_RANGES:
        return PLAUSIBLE_RANGES[name]
    return (0.0, 1.0) if spec.feature(name).kind == "binary" else None


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
