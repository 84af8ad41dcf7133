"""A rule policy written from the Surviving Sepsis Campaign 2021 adult guidelines (Evans et al., Crit Care Med
2021;49:e1063-e1143, "SSC-2021" below), mapped onto the cohort's 5 x 5 dose bins.

The guideline gives doses and targets, not a 4-hourly protocol; where it leaves the step-by-step choice to
bedside reassessment, the rule below states the choice made here (marked *choice*).

Fluids (mL in the 4-hour step, binned with the cohort's ``fluid`` edges, ``ActionBins.to_bin``):

- F1 stop: no resuscitation fluid when there are signs of fluid overload: P/F ratio < 200 mmHg (worsening
  oxygenation; SSC-2021 asks to reassess and stop when fluids no longer help and harm appears) or a strongly
  positive cumulative balance > 5,000 mL (*choice*: positive balance beyond ~5 L is associated with harm,
  e.g. Boyd et al. Crit Care Med 2011;39:259; SSC-2021 gives no number). F1 overrides F2-F4.
- F2 initial resuscitation: in the first 3 hours (the admission step, step 0) with sepsis-induced
  hypoperfusion, MAP < 65 mmHg or lactate >= 4 mmol/L, give at least 30 mL/kg crystalloid (SSC-2021
  initial resuscitation, weak recommendation), minus the fluid already charted since admission
  (``input_total``), using the patient's ``Weight_kg`` (80 kg if not charted).
- F3 reassess and repeat: later steps with persisting hypoperfusion (MAP < 65 or lactate >= 4) get a 500 mL
  fluid challenge (SSC-2021 recommends guiding further fluid by frequent reassessment and dynamic measures of
  fluid responsiveness, which the chart does not have; *choice*: one 500 mL challenge per step while
  hypoperfused).
- F4 lactate-guided: MAP >= 65 with lactate 2-4 mmol/L gets a 250 mL challenge (SSC-2021 initial resuscitation:
  guide resuscitation to decrease an elevated lactate, weak recommendation; *choice* of 250 mL).
- F5 otherwise no resuscitation fluid (SSC-2021 makes no recommendation for or against restrictive fluids
  after resuscitation; *choice*: none once perfusion is adequate).

Vasopressor (norepinephrine-equivalent bins of the cohort's ``vaso`` edges, titrated one bin per step):

- V1 norepinephrine first line, target MAP 65 mmHg (SSC-2021 mean arterial pressure and vasoactive agents,
  strong recommendations); start it during resuscitation rather than after all fluid is in (SSC-2021: start
  vasopressors peripherally rather than delay them).
  MAP < 65: start at the bin of 0.1 mcg/kg/min (*choice*: a usual starting rate) or escalate one bin; MAP < 55
  escalates two bins (*choice*: faster titration in severe hypotension).
- V2 hold at target: 65 <= MAP < 75 keeps the current bin.
- V3 de-escalate when MAP is comfortably above target: MAP >= 75 (*choice*: target + 10 mmHg) lowers one bin
  (down to none); SSC-2021 targets 65 and warns that higher MAP targets bring no benefit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sepsis_rl.cohort.spec import N_BINS, CohortSpec, action_index
from sepsis_rl.eval.policy import DecisionBatch, Policy, one_hot


@dataclass(frozen=True)
class GuidelineConfig:
    """The rule thresholds (SSC-2021 numbers and the documented choices)."""

    map_target: float = 65.0  # mmHg, V1
    map_severe: float = 55.0  # mmHg, V1 two-bin escalation
    map_wean: float = 75.0  # mmHg, V3
    lactate_shock: float = 4.0  # mmol/L, F2/F3
    lactate_elevated: float = 2.0  # mmol/L, F4
    initial_ml_per_kg: float = 30.0  # F2
    challenge_ml: float = 500.0  # F3
    small_challenge_ml: float = 250.0  # F4
    pf_stop: float = 200.0  # mmHg, F1
    balance_stop_ml: float = 5000.0  # F1
    vaso_start_dose: float = 0.1  # mcg/kg/min norepinephrine, V1
    default_weight_kg: float = 80.0

    @classmethod
    def tiny(cls) -> "GuidelineConfig":
        return cls()

    @classmethod
    def default(cls) -> "GuidelineConfig":
        return cls()


REQUIRED = ("MeanBP", "Arterial_lactate", "PaO2_FiO2", "cumulated_balance", "input_total")


class GuidelinePolicy(Policy):
    """Deterministic SSC-2021 rules (module docstring) over the cohort's dose bins."""

    name = "guideline"
    deterministic = True

    def __init__(self, spec: CohortSpec, cfg: GuidelineConfig | None = None) -> None:
        missing = [n for n in REQUIRED if n not in spec.feature_names]
        if missing:
            raise ValueError(f"the guideline policy needs the features {missing}, which this cohort does not chart")
        self.spec = spec
        self.cfg = cfg or GuidelineConfig()
        self.info: dict[str, object] = {"rules": "SSC-2021, see sepsis_rl/eval/baselines/guideline.py"}

    def fluid_ml(self, batch: DecisionBatch) -> np.ndarray:
        """[B] the rule's fluid dose in mL for this step (F1-F5)."""
        c = self.cfg
        mapv, lac = batch.column("MeanBP"), batch.column("Arterial_lactate")
        pf, balance, given = batch.column("PaO2_FiO2"), batch.column("cumulated_balance"), batch.column("input_total")
        weight = batch.column("Weight_kg") if "Weight_kg" in batch.feature_names else np.full(len(batch), np.nan)
        weight = np.where(np.isfinite(weight) & (weight > 0), weight, c.default_weight_kg)
        hypoperfused = (mapv < c.map_target) | (lac >= c.lactate_shock)
        initial = np.maximum(c.initial_ml_per_kg * weight - np.maximum(given, 0.0), 0.0)
        dose = np.where(hypoperfused & (batch.steps == 0), initial,  # F2
                        np.where(hypoperfused, c.challenge_ml,  # F3
                                 np.where(lac >= c.lactate_elevated, c.small_challenge_ml, 0.0)))  # F4 / F5
        overload = (pf < c.pf_stop) | (balance > c.balance_stop_ml)
        return np.where(overload, 0.0, dose)  # F1

    def vaso_bin(self, batch: DecisionBatch) -> np.ndarray:
        """[B] the rule's vasopressor bin (V1-V3), titrated from the previous step's bin."""
        c = self.cfg
        mapv = batch.column("MeanBP")
        prev = np.where(batch.last_action >= 0, batch.last_action % N_BINS, 0)
        start = int(max(self.spec.vaso.to_bin(np.array([c.vaso_start_dose]))[0], 1))
        up = np.where(mapv < c.map_severe, 2, 1)
        escalated = np.where(prev == 0, start + up - 1, prev + up)
        out = np.where(mapv < c.map_target, escalated,  # V1
                       np.where(mapv >= c.map_wean, prev - 1, prev))  # V3 / V2
        return np.clip(out, 0, N_BINS - 1)

    def actions(self, batch: DecisionBatch) -> np.ndarray:
        fluid_bin = self.spec.fluid.to_bin(self.fluid_ml(batch)).astype(np.int64)
        return action_index(fluid_bin, self.vaso_bin(batch).astype(np.int64))

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        return one_hot(self.actions(batch))


def build_guideline(spec: CohortSpec, cfg: GuidelineConfig | None = None) -> GuidelinePolicy:
    return GuidelinePolicy(spec, cfg)
