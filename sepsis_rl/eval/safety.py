"""Safety metrics: guideline adherence, under- and over-dosing, action tables and dose by state.

Every rule is a property of (the charted state, the previous action, the chosen action). Each rule is
written once as a [N, 25] matrix over *all* candidate actions, so the same code scores

- a policy on the **logged test states** (its choice in the clinicians' situations): the rate is the
  *expected* rate under the policy's probabilities, sum_a pi(a|s) * rule(s, a) averaged over the at-risk
  decisions (a deterministic policy's one-hot rows make this its greedy choice; pass ``mode="argmax"`` to
  score a stochastic policy's most likely action instead), and
- a policy on its **own true trajectories** (the driver passes the visited states, previous actions and
  the actions actually taken, as one-hot rows).

Definitions (MAP = mean arterial pressure ``MeanBP``; a decision covers the next 4 hours; at admission the
previous vasopressor bin is 0; fluid and vasopressor bins 0-4 are the cohort's dose bins, 0 = none):

- **G1 adherence** (Surviving Sepsis Campaign: hypoperfusion must be treated). At-risk: lactate > 2 mmol/L
  or MAP < 65 mmHg. Adherent: the action is not "no fluid and no vasopressor". Higher is better.
- **G2 adherence** (vasopressors are titrated to a MAP target of 65 mmHg; above it they are not raised).
  At-risk: MAP >= 65 mmHg. Adherent: vasopressor bin <= previous vasopressor bin. Higher is better.
- **Under-dosing** (hypotension left under-treated once fluids alone have had their chance). At-risk:
  MAP < 65 mmHg and either the initial resuscitation volume has been given (cumulative input >= 30 mL/kg
  body weight, the SSC's initial bolus) or a vasopressor is already running. Under-dosed: no vasopressor
  (bin 0), or a vasopressor reduced below its previous bin. Lower is better.
- **Over-dosing** (treatment that harms when it is not needed). At-risk: MAP >= 80 mmHg, or a cumulative
  fluid balance > +5 L, or PaO2/FiO2 < 200 mmHg. Over-dosed: a vasopressor escalation (bin above the
  previous) at MAP >= 80, or a large fluid dose (fluid bin >= 3) with balance > +5 L or P/F < 200
  (overload / lung injury). Lower is better.

Rates are over each rule's at-risk decisions (their counts are reported beside them); a rule with no
at-risk decision has rate None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from sepsis_rl.cohort.spec import N_ACTIONS, N_BINS

FLUID_OF = np.arange(N_ACTIONS) // N_BINS  # [25] fluid bin of each joint action
VASO_OF = np.arange(N_ACTIONS) % N_BINS  # [25] vasopressor bin of each joint action

MAP_BANDS = ((-np.inf, 55.0), (55.0, 65.0), (65.0, 75.0), (75.0, 85.0), (85.0, np.inf))
MAP_LABELS = ("<55", "55-65", "65-75", "75-85", ">=85")
LACTATE_BANDS = ((-np.inf, 2.0), (2.0, 4.0), (4.0, np.inf))
LACTATE_LABELS = ("<2", "2-4", ">=4")


@dataclass(frozen=True)
class SafetyColumns:
    """Which state features the rules read (AI Clinician names by default) and their thresholds."""

    map: str = "MeanBP"  # mmHg
    lactate: str = "Arterial_lactate"  # mmol/L
    balance: str = "cumulated_balance"  # mL since admission
    pf: str = "PaO2_FiO2"  # mmHg
    input_total: str = "input_total"  # mL since admission
    weight: str = "Weight_kg"  # kg; 80 kg where the cohort has no weight
    default_weight_kg: float = 80.0
    fluid_ml_per_kg: float = 30.0
    large_fluid_bin: int = 3
    balance_overload_ml: float = 5000.0
    pf_low: float = 200.0
    map_high: float = 80.0


@dataclass
class SafetyState:
    """The columns the rules need, one row per decision, plus the previous vasopressor bin."""

    map: np.ndarray
    lactate: np.ndarray
    balance: np.ndarray
    pf: np.ndarray
    input_total: np.ndarray
    weight: np.ndarray
    prev_vaso: np.ndarray  # previous action's vasopressor bin, 0 at admission

    @classmethod
    def from_states(cls, states: np.ndarray, feature_names: tuple[str, ...] | list[str], prev_actions: np.ndarray,
                    cols: SafetyColumns = SafetyColumns()) -> SafetyState:
        names = list(feature_names)
        states = np.asarray(states, np.float64)
        prev = np.asarray(prev_actions, np.int64)
        if states.ndim != 2 or states.shape[1] != len(names) or len(prev) != len(states):
            raise ValueError(f"states must be [N, {len(names)}] with one previous action per row, "
                             f"got {list(states.shape)} and {len(prev)}")

        def col(name: str) -> np.ndarray:
            if name not in names:
                raise ValueError(f"safety metrics need state feature {name!r}; the cohort has no such column")
            return states[:, names.index(name)]

        weight = col(cols.weight) if cols.weight in names else np.full(len(states), cols.default_weight_kg)
        return cls(col(cols.map), col(cols.lactate), col(cols.balance), col(cols.pf), col(cols.input_total),
                   weight, np.where(prev >= 0, prev % N_BINS, 0))


def rule_matrices(s: SafetyState, cols: SafetyColumns = SafetyColumns()) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{rule: (at_risk [N] bool, hit [N, 25] bool)}: ``hit`` = the action is adherent (G1, G2) or unsafe (dosing)."""
    fluid, vaso = FLUID_OF[None, :], VASO_OF[None, :]
    prev = s.prev_vaso[:, None]
    hypotensive = s.map < 65.0
    resuscitated = s.input_total >= cols.fluid_ml_per_kg * s.weight
    overloaded = (s.balance > cols.balance_overload_ml) | (s.pf < cols.pf_low)
    high_map = s.map >= cols.map_high
    return {
        "g1": ((s.lactate > 2.0) | hypotensive, np.broadcast_to((fluid > 0) | (vaso > 0), (len(s.map), N_ACTIONS))),
        "g2": (s.map >= 65.0, vaso <= prev),
        "underdosing": (hypotensive & (resuscitated | (s.prev_vaso > 0)), (vaso == 0) | (vaso < prev)),
        "overdosing": (high_map | overloaded,
                       (high_map[:, None] & (vaso > prev)) | (overloaded[:, None] & (fluid >= cols.large_fluid_bin))),
    }


def _as_probs(probs_or_actions: np.ndarray, n: int, mode: Literal["expected", "argmax"]) -> np.ndarray:
    x = np.asarray(probs_or_actions)
    if x.ndim == 1:  # actions taken
        p = np.zeros((len(x), N_ACTIONS))
        p[np.arange(len(x)), x.astype(np.int64)] = 1.0
    else:
        p = x.astype(np.float64)
        if mode == "argmax":
            p = np.eye(N_ACTIONS)[p.argmax(axis=1)]
        elif mode != "expected":
            raise ValueError(f"mode must be 'expected' or 'argmax', got {mode!r}")
    if p.shape != (n, N_ACTIONS):
        raise ValueError(f"expected {n} actions or [{n}, {N_ACTIONS}] probabilities, got {list(x.shape)}")
    return p


def safety_metrics(states: np.ndarray, feature_names: tuple[str, ...] | list[str], prev_actions: np.ndarray,
                   probs_or_actions: np.ndarray, mode: Literal["expected", "argmax"] = "expected",
                   cols: SafetyColumns = SafetyColumns()) -> dict:
    """{"g1", "g2", "underdosing", "overdosing": rate or None, "n_at_risk": {rule: count}, "mode": mode}."""
    s = SafetyState.from_states(states, feature_names, prev_actions, cols)
    p = _as_probs(probs_or_actions, len(s.map), mode)
    out: dict = {"n_at_risk": {}, "mode": mode}
    for name, (at_risk, hit) in rule_matrices(s, cols).items():
        n = int(at_risk.sum())
        out[name] = float((p[at_risk] * hit[at_risk]).sum() / n) if n else None
        out["n_at_risk"][name] = n
    return out


def action_table(probs_or_actions: np.ndarray) -> list[list[float]]:
    """5x5 share of decisions by (fluid bin row, vasopressor bin column); expected under probabilities; sums to 1."""
    x = np.asarray(probs_or_actions)
    p = _as_probs(x, len(x), "expected")
    total = p.sum()
    return (p.sum(axis=0) / max(total, 1e-12)).reshape(N_BINS, N_BINS).tolist()


def _banded(values: np.ndarray, bands: tuple, p: np.ndarray) -> dict:
    fluid, vaso, count = [], [], []
    for lo, hi in bands:
        rows = (values >= lo) & (values < hi)
        n = int(rows.sum())
        count.append(n)
        fluid.append(float((p[rows] @ FLUID_OF).mean()) if n else None)
        vaso.append(float((p[rows] @ VASO_OF).mean()) if n else None)
    return {"fluid": fluid, "vaso": vaso, "n": count}


def dose_by_state(states: np.ndarray, feature_names: tuple[str, ...] | list[str], probs_or_actions: np.ndarray,
                  cols: SafetyColumns = SafetyColumns()) -> dict:
    """Mean (expected) fluid and vasopressor bin by MAP band and by lactate band: does dose follow need?"""
    names = list(feature_names)
    states = np.asarray(states, np.float64)
    p = _as_probs(probs_or_actions, len(states), "expected")
    for name in (cols.map, cols.lactate):
        if name not in names:
            raise ValueError(f"dose by state needs state feature {name!r}; the cohort has no such column")
    return {
        "map_bands": list(MAP_LABELS),
        "map": _banded(states[:, names.index(cols.map)], MAP_BANDS, p),
        "lactate_bands": list(LACTATE_LABELS),
        "lactate": _banded(states[:, names.index(cols.lactate)], LACTATE_BANDS, p),
    }
