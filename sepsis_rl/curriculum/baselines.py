"""Reference policies played in the same world model, on the same held-out starts, with the same noise.

The agent's held-out episodes use fixed episode ids (``EVAL_ID_BASE`` ...); the world model's noise is
keyed by (seed, episode id, step), so replaying those ids here gives the clinician and random policies
the very same simulated luck: the comparison is paired, not just same-distribution.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from sepsis_rl.cohort.behaviour import ClinicianPolicy, ClinicianStyle
from sepsis_rl.cohort.spec import N_BINS
from sepsis_rl.rollout.psr import Simulator

Policy = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""(states [n, F], steps [n], last actions [n] (-1 before the first), episode rows [n]) -> actions [n]."""


def random_policy(seed: int) -> Policy:
    rng = np.random.default_rng(seed)
    return lambda states, steps, last, rows: rng.integers(0, N_BINS * N_BINS, len(states))


def clinician_policy(feature_names: list[str], n_episodes: int, seed: int) -> Policy:
    """The synthetic cohort's behaviour policy (needs its features: MeanBP, lactate, balance, PaO2/FiO2),
    with one clinician style per episode, drawn once."""
    pol = ClinicianPolicy(tuple(feature_names))
    rng = np.random.default_rng(seed)
    style = pol.sample_styles(n_episodes, rng)

    def act(states: np.ndarray, steps: np.ndarray, last: np.ndarray, rows: np.ndarray) -> np.ndarray:
        sub = ClinicianStyle(style.fluid_bias[rows], style.map_target[rows])
        prev_vaso = np.where(last < 0, 0, last % N_BINS)
        return pol.sample(pol.probs(states, steps, prev_vaso, sub), rng)

    return act


def play_policy(sim: Simulator, policy: Policy, starts: np.ndarray, episode_ids: np.ndarray) -> dict[str, float]:
    """Play ``policy`` from ``starts`` until every episode ends; mean return, mortality, length."""
    ids = np.asarray(episode_ids, dtype=np.int64)
    states = np.asarray(sim.reset(ids, starts), dtype=np.float64)
    last = np.full(len(ids), -1)
    returns, died, length = np.zeros(len(ids)), np.zeros(len(ids)), np.zeros(len(ids), int)
    live = np.arange(len(ids))
    t = 0
    while live.size:
        acts = np.asarray(policy(states[live], np.full(live.size, t), last[live], live), dtype=np.int64)
        res = sim.step(ids[live], acts)
        returns[live] += res.reward
        died[live] += res.death_mass
        length[live] += 1
        last[live] = acts
        states[live] = res.state
        live = live[~np.asarray(res.done, dtype=bool)]
        t += 1
    sim.release(ids)
    return {"mean_return": float(returns.mean()), "mortality": float(died.mean()), "mean_length": float(length.mean()),
            "episodes": len(ids)}
