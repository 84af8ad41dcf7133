"""A stochastic, clinician-like behaviour policy for the synthetic cohort, with exact propensities.

Guideline-driven (Surviving Sepsis Campaign 2021), and no optimal policy: fluid boluses for hypotension,
high lactate or oliguria (< 0.5 mL/kg/h), more in the first hours; fewer fluids once the balance is strongly
positive, urine flows (> 1 mL/kg/h) or oxygenation fails. Norepinephrine is first-line for hypotension and
started early rather than after all fluids: a MAP under the clinician's target starts it at bin 2 (~0.14
mcg/kg/min) and escalates it a bin per 4 h while hypotension persists (two bins when more than 10 mmHg
below target); a MAP within 5 mmHg above target that fell more than 3 mmHg in 4 h (or, on a vasopressor,
with lactate > 4) gets a bin more; a MAP more than 8 mmHg above target weans half a bin, more than 15 a bin.
Clinicians differ: each stay gets a clinician style (a fluid bias and a MAP target around 65 mmHg, or
around a shifted mean for the MAP-target trial analogues). Fluid and vasopressor bins are drawn
independently from softmaxes around a target bin, mixed with 4% uniform exploration so every action has
support (which off-policy evaluation needs): the clinicians are noisy and react to the last chart 4 h
late, so a policy that plans can beat them. ``probs`` returns the full 25-action distribution the action
was drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sepsis_rl.cohort.noise import KeyedNoise, stream_seed
from sepsis_rl.cohort.spec import N_BINS, action_index


@dataclass(frozen=True)
class ClinicianStyle:
    fluid_bias: np.ndarray  # added to the target fluid bin
    map_target: np.ndarray  # mmHg under which vasopressors are escalated


@dataclass(frozen=True)
class ClinicianPolicy:
    """Behaviour policy over the 25 joint actions; inputs are charted features by name."""

    feature_names: tuple[str, ...]
    fluid_sharpness: float = 1.2
    vaso_sharpness: float = 1.2
    exploration: float = 0.04
    map_target: float = 65.0  # mean MAP target (SSC: 65 mmHg); shifted for the MAP-target trial analogues

    def sample_styles(self, n: int, rng: np.random.Generator) -> ClinicianStyle:
        return ClinicianStyle(fluid_bias=rng.normal(0, 0.5, n), map_target=rng.normal(self.map_target, 3, n))

    def keyed_styles(self, seed: int, episode_ids: np.ndarray) -> ClinicianStyle:
        """Each stay's clinician style as a function of (seed, stay) alone: the cohort's logged clinicians
        and a re-simulated clinician with the same seed are the same people (with a shifted ``map_target``,
        the same people aiming higher or lower)."""
        noise = KeyedNoise(stream_seed(seed, "clinician-style"), episode_ids, 0)
        return ClinicianStyle(fluid_bias=noise.normal(0, 0.5), map_target=self.map_target + noise.normal(0, 3))

    def _col(self, obs: np.ndarray, name: str) -> np.ndarray:
        return obs[:, self.feature_names.index(name)]

    def probs(self, obs: np.ndarray, step: np.ndarray, prev_vaso_bin: np.ndarray, style: ClinicianStyle,
              prev_map: np.ndarray | None = None) -> np.ndarray:
        """Action probabilities [n, 25] (index = 5 * fluid bin + vasopressor bin); rows sum to 1.

        ``prev_map`` is the MAP charted 4 h earlier (None or NaN where there is none): a falling MAP near
        the target is treated before it crosses it, as a bedside team titrating within the block would."""
        mapv = self._col(obs, "MeanBP")
        lac = self._col(obs, "Arterial_lactate")
        balance = self._col(obs, "cumulated_balance")
        pf = self._col(obs, "PaO2_FiO2")
        given = self._col(obs, "input_total")
        urine, weight = self._col(obs, "output_4hourly"), self._col(obs, "Weight_kg")
        sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
        fluid_target = (
            0.9
            + 1.4 * (mapv < 65) + 0.6 * (mapv < 55)
            + 1.4 * sig((lac - 2.0) / 0.5)
            + 1.3 * (np.asarray(step) == 0)
            - 1.8 * sig((balance - 4000) / 800)
            - 1.0 * (pf < 200)
            + 0.7 * (urine < 2.0 * weight) - 0.5 * (urine > 4.0 * weight)  # oliguria < 0.5 mL/kg/h; > 1 mL/kg/h
            + style.fluid_bias
        )
        falling = np.zeros(len(obs), bool) if prev_map is None else np.nan_to_num(prev_map - mapv, nan=0.0) > 3
        vaso_target = self.vaso_target(mapv, lac, falling, prev_vaso_bin, style)
        pf_bins = _soft_bins(fluid_target, self.fluid_sharpness)
        pv_bins = _soft_bins(vaso_target, self.vaso_sharpness)
        joint = (pf_bins[:, :, None] * pv_bins[:, None, :]).reshape(len(obs), N_BINS * N_BINS)
        return (1 - self.exploration) * joint + self.exploration / (N_BINS * N_BINS)

    def vaso_target(self, mapv: np.ndarray, lac: np.ndarray, falling: np.ndarray, prev_vaso_bin: np.ndarray,
                    style: ClinicianStyle) -> np.ndarray:
        """Target vasopressor bin (SSC 2021: norepinephrine first-line for hypotension, started early rather
        than after all fluids, titrated to the MAP target): hypotension starts the infusion at bin 2 and
        escalates a bin per 4 h while it persists, two when far below target; a MAP within 5 mmHg above
        target that is falling, or with lactate > 4, gets a bin more; a MAP well above target weans."""
        prev = np.asarray(prev_vaso_bin, dtype=np.float64)
        gap = style.map_target - mapv
        hypotensive = gap > 0
        start = np.where(prev == 0, 2.0, 1.0)
        escalate = np.where(hypotensive, start + (gap > 10), 0.0)
        threatened = ~hypotensive & (gap > -5) & (falling | ((lac > 4) & (prev > 0)))
        escalate = escalate + np.where(threatened, 1.0, 0.0)
        wean = np.where(gap < -15, 1.0, np.where(gap < -8, 0.5, 0.0))
        return np.clip(prev + escalate - wean * (prev > 0), 0, 4)

    def sample(self, probs: np.ndarray, rng: np.random.Generator | KeyedNoise) -> np.ndarray:
        """Draw one joint action per row from ``probs`` (inverse-CDF, vectorised)."""
        return sample_actions(probs, rng.random(len(probs)))


def sample_actions(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw of one action per row of ``probs`` from uniforms ``u`` [n] in [0, 1)."""
    cdf = np.cumsum(probs, axis=1)
    u = np.asarray(u) * cdf[:, -1]
    return np.minimum((cdf < u[:, None]).sum(axis=1), probs.shape[1] - 1)


def _soft_bins(target: np.ndarray, sharpness: float) -> np.ndarray:
    """Softmax over bins 0..4 of -sharpness * (bin - target)^2, rows sum to 1."""
    bins = np.arange(N_BINS, dtype=np.float64)
    logits = -sharpness * (bins[None, :] - np.asarray(target, dtype=np.float64)[:, None]) ** 2
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    return w / w.sum(axis=1, keepdims=True)


__all__ = ["ClinicianPolicy", "ClinicianStyle", "action_index"]
