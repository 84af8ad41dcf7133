"""Reference policies: the clinician (exact or estimated behaviour policy), random, constant regimens.

The synthetic clinician is the cohort's behaviour policy itself: its style per stay is keyed by the cohort
seed and the stay id, so on the logged test rows its probabilities are exactly the logged ``behaviour_prob``
and in a truth rollout with the cohort seed it is the very same clinician.
"""

from __future__ import annotations

import numpy as np

from sepsis_rl.cohort.behaviour import ClinicianPolicy as _Behaviour
from sepsis_rl.cohort.spec import N_ACTIONS, N_BINS, split_action
from sepsis_rl.eval.policy import DecisionBatch, Policy, one_hot


class SyntheticClinician(Policy):
    """The synthetic cohort's clinician-like behaviour policy, with exact propensities."""

    name = "clinician"

    def __init__(self, feature_names: tuple[str, ...], cohort_seed: int, map_target: float = 65.0):
        self.behaviour = _Behaviour(tuple(feature_names), map_target=map_target)
        self.cohort_seed = cohort_seed
        if map_target != 65.0:
            self.name = f"clinician_map{map_target:g}"

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        style = self.behaviour.keyed_styles(self.cohort_seed, batch.episode_ids % _STRIDE_STYLE)
        prev_vaso = np.where(batch.last_action >= 0, split_action(np.maximum(batch.last_action, 0))[1], 0)
        if not len(batch):
            return np.zeros((0, N_ACTIONS))
        mapv = batch.history[:, :, batch.feature_names.index("MeanBP")]
        prev_map = np.where(batch.lengths > 1, mapv[:, -2], np.nan)
        return self.behaviour.probs(batch.current, batch.steps, prev_vaso, style, prev_map)


_STRIDE_STYLE = 2**62  # styles keyed by the full rollout id (repeats meet new clinicians)


class RandomPolicy(Policy):
    """Uniform over the 25 actions."""

    name = "random"

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        return np.full((len(batch), N_ACTIONS), 1.0 / N_ACTIONS)


class ConstantPolicy(Policy):
    """The same joint action at every decision of the stay (``no_treatment`` is F0V0)."""

    deterministic = True

    def __init__(self, action: int, name: str | None = None):
        if not 0 <= action < N_ACTIONS:
            raise ValueError(f"constant action must be in 0..{N_ACTIONS - 1}, got {action}")
        self.action = action
        self.name = name or f"const_F{action // N_BINS}V{action % N_BINS}"

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        return one_hot(np.full(len(batch), self.action))


def no_treatment() -> ConstantPolicy:
    return ConstantPolicy(0, "no_treatment")
