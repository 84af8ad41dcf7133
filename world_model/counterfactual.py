"""Counterfactual ground truth from the synthetic cohort's simulator: what *would* the next chart be
under another action?

A cohort only shows the consequence of the logged action, and replaying its stays cannot reproduce the
logged charts (the cohort's random stream is not stored). So fresh patients are simulated from
admission under the clinician behaviour policy; at every step the same hidden patient is also
stepped with a random *other* action. Both branches use the same random numbers (common random
numbers), so their difference is the effect of the action alone, not of noise. The model is then asked
for both next states from the same observed history, which makes factual and counterfactual errors
directly comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sepsis_rl.cohort.behaviour import ClinicianPolicy, ClinicianStyle
from sepsis_rl.cohort.simulator import FLUID_TOP, VASO_TOP, SepsisSimulator
from sepsis_rl.cohort.spec import N_ACTIONS, ActionBins, CohortSpec, split_action


@dataclass
class BranchedTransitions:
    """Per decision (N rows): the observed window and the true next chart under two actions."""

    history: np.ndarray  # [N, W, F] real units
    mask: np.ndarray  # [N, W]
    action: np.ndarray  # [N] the clinician's (factual) action
    next_state: np.ndarray  # [N, F] true next chart under ``action``
    continues: np.ndarray  # [N] the stay went on after the factual step (a next chart exists)
    cf_action: np.ndarray  # [N] a uniformly drawn different action
    cf_next_state: np.ndarray  # [N, F]
    cf_continues: np.ndarray  # [N]
    time: np.ndarray  # [N] decisions since admission


def dose_in_bin(bins_: np.ndarray, ab: ActionBins, top: float, u: np.ndarray) -> np.ndarray:
    """A dose uniformly inside each bin (bin 0 = none), as the synthetic cohort's clinicians give them."""
    lows = np.array([0.0, 0.0, *ab.edges])
    highs = np.array([0.0, *ab.edges, top])
    return np.where(bins_ == 0, 0.0, lows[bins_] + u * (highs[bins_] - lows[bins_]))


def simulate_branches(
    sim: SepsisSimulator, spec: CohortSpec, n_patients: int, window: int, seed: int = 0
) -> BranchedTransitions:
    """Simulate ``n_patients`` fresh stays and branch every decision; see the module docstring."""
    if list(sim.feature_names) != spec.feature_names:
        raise ValueError("the ground-truth simulator's features differ from the cohort's")
    rng = np.random.default_rng([seed, 0])
    policy = ClinicianPolicy(sim.feature_names)
    batch = sim.sample_patients(n_patients, rng)
    style = policy.sample_styles(n_patients, rng)
    map_col = sim.feature_names.index("MeanBP")
    active = np.arange(n_patients)
    prev_vaso = np.zeros(n_patients, dtype=np.int64)
    obs = sim.observe(batch, rng)
    hist = np.repeat(obs[:, None], window, axis=1)
    mask = np.zeros((n_patients, window), dtype=bool)
    mask[:, -1] = True
    rec: list[tuple[np.ndarray, ...]] = []
    for t in range(sim.config.max_steps):
        if active.size == 0:
            break
        sub = ClinicianStyle(style.fluid_bias[active], style.map_target[active])
        prev_map = np.where(mask[:, -2], hist[:, -2, map_col], np.nan)
        action = policy.sample(policy.probs(obs, np.full(active.size, t), prev_vaso[active], sub, prev_map), rng)
        cf = (action + rng.integers(1, N_ACTIONS, active.size)) % N_ACTIONS
        u = rng.random((2, active.size))
        nexts = []
        for a in (action, cf):
            fb, vb = split_action(a)
            fluid = dose_in_bin(fb, spec.fluid, FLUID_TOP, u[0])
            vaso = dose_in_bin(vb, spec.vaso, VASO_TOP, u[1])
            branch_rng = np.random.default_rng([seed, 1, t])  # identical stream for both branches
            out = sim.step(batch, fluid, vaso, branch_rng)
            nexts.append((out, sim.observe(out.batch, branch_rng)))
        (out_f, obs_f), (out_c, obs_c) = nexts
        rec.append((hist, mask, action, obs_f, ~out_f.done, cf, obs_c, ~out_c.done, np.full(active.size, t)))
        prev_vaso[active] = split_action(action)[1]
        keep = ~out_f.done
        hist = np.concatenate([hist[:, 1:], obs_f[:, None]], axis=1)[keep]
        mask = np.concatenate([mask[:, 1:], np.ones((len(mask), 1), dtype=bool)], axis=1)[keep]
        active, batch, obs = active[keep], out_f.batch.take(keep), obs_f[keep]
    cols = [np.concatenate(c) for c in zip(*rec)]
    return BranchedTransitions(*cols)
