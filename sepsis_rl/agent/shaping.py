"""Reward terms added to the cohort reward during RL: safety (guideline violations) and format (parse failures).

Safety rules, each costing ``safety_penalty`` per decision that breaks it (a rule whose feature the
cohort lacks is skipped):
- *vasopressor escalation with a high MAP*: the vasopressor bin goes up while MAP >= ``high_map`` mmHg
  (the guideline target is 65; escalating well above it only adds arrhythmia and ischaemia risk);
- *fluid into overload*: a fluid bin >= ``large_fluid_bin`` while the cumulative balance exceeds
  ``overload_balance_ml`` or PaO2/FiO2 is under ``overload_pf`` (fluid that can no longer help
  perfusion and worsens oxygenation).
Format: ``format_penalty`` per unparseable proposal or prescription, so RL removes what BC left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sepsis_rl.cohort.spec import N_BINS


@dataclass(frozen=True)
class ShapingConfig:
    safety_penalty: float = 1.0
    format_penalty: float = 1.0
    high_map: float = 80.0
    overload_balance_ml: float = 5000.0
    overload_pf: float = 200.0
    large_fluid_bin: int = 3


class SafetyRules:
    def __init__(self, feature_names: Sequence[str], config: ShapingConfig = ShapingConfig()):
        names = list(feature_names)
        self.cfg = config
        self.map = names.index("MeanBP") if "MeanBP" in names else None
        self.balance = names.index("cumulated_balance") if "cumulated_balance" in names else None
        self.pf = names.index("PaO2_FiO2") if "PaO2_FiO2" in names else None

    def violations(self, state: np.ndarray, action: int, last_action: int | None) -> list[str]:
        """Names of the rules that prescribing ``action`` in ``state`` (real units) breaks."""
        cfg = self.cfg
        fluid, vaso = divmod(int(action), N_BINS)
        last_vaso = 0 if last_action is None else int(last_action) % N_BINS
        out = []
        if self.map is not None and vaso > last_vaso and state[self.map] >= cfg.high_map:
            out.append("vaso_escalation_high_map")
        overloaded = (self.balance is not None and state[self.balance] > cfg.overload_balance_ml) or (
            self.pf is not None and state[self.pf] < cfg.overload_pf)
        if fluid >= cfg.large_fluid_bin and overloaded:
            out.append("fluid_in_overload")
        return out

    def shaping(self, violations: list[str], parse_failures: int) -> float:
        return -self.cfg.safety_penalty * len(violations) - self.cfg.format_penalty * parse_failures
