"""The sepsis reward (Raghu et al. 2017, as used by the SepsisAgent code), configurable.

For the transition from step t to t+1 of a stay (all but the last step)::

    r_t = c0 * [SOFA' == SOFA and SOFA' > 0] + c1 * (SOFA' - SOFA) + c2 * tanh(lactate' - lactate)

with c0 = -0.025, c1 = -0.125, c2 = -2 (lactate in mmol/L): a persistent non-zero SOFA costs a little,
a rising SOFA or lactate costs, a falling one pays. The last step of a stay carries only the terminal
reward: +15 if the patient survives, -15 if not. There is no discount inside the reward; discounting is
the learner's business.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class RewardConfig:
    """Coefficients of the intermediate reward and the terminal reward."""

    c0_persistent_sofa: float = -0.025
    c1_sofa_change: float = -0.125
    c2_lactate_change: float = -2.0
    terminal_survive: float = 15.0
    terminal_die: float = -15.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def intermediate_reward(
    sofa: np.ndarray, sofa_next: np.ndarray, lactate: np.ndarray, lactate_next: np.ndarray, cfg: RewardConfig
) -> np.ndarray:
    """Per-transition shaping reward; arrays broadcast elementwise."""
    sofa, sofa_next = np.asarray(sofa, np.float64), np.asarray(sofa_next, np.float64)
    lactate, lactate_next = np.asarray(lactate, np.float64), np.asarray(lactate_next, np.float64)
    persistent = (sofa_next == sofa) & (sofa_next > 0)
    return (
        cfg.c0_persistent_sofa * persistent
        + cfg.c1_sofa_change * (sofa_next - sofa)
        + cfg.c2_lactate_change * np.tanh(lactate_next - lactate)
    )


def terminal_reward(died: np.ndarray, cfg: RewardConfig) -> np.ndarray:
    """+terminal_survive for survivors, terminal_die for deaths."""
    died = np.asarray(died).astype(bool)
    return np.where(died, cfg.terminal_die, cfg.terminal_survive)


def episode_rewards(
    episode_ids: np.ndarray,
    sofa: np.ndarray,
    lactate: np.ndarray,
    outcome: np.ndarray,
    cfg: RewardConfig = RewardConfig(),
) -> np.ndarray:
    """Rewards for rows sorted by (episode, step): intermediate within a stay, terminal on its last row."""
    episode_ids = np.asarray(episode_ids)
    n = len(episode_ids)
    rewards = np.empty(n, dtype=np.float64)
    if n == 0:
        return rewards
    last = np.ones(n, dtype=bool)
    last[:-1] = episode_ids[1:] != episode_ids[:-1]
    inner = ~last
    idx = np.nonzero(inner)[0]
    rewards[idx] = intermediate_reward(sofa[idx], sofa[idx + 1], lactate[idx], lactate[idx + 1], cfg)
    rewards[last] = terminal_reward(np.asarray(outcome)[last], cfg)
    return rewards
