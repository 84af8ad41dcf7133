"""The Raghu et al. reward against values computed by hand."""

import math

import numpy as np
import pytest

from sepsis_rl.cohort.reward import RewardConfig, episode_rewards, intermediate_reward, terminal_reward

CFG = RewardConfig()


def test_intermediate_reward_hand_values():
    # SOFA 6 -> 6 (persistent, > 0), lactate 3.0 -> 2.0: -0.025 - 0 - 2 tanh(-1) = -0.025 + 1.5231883
    assert intermediate_reward(6, 6, 3.0, 2.0, CFG) == pytest.approx(-0.025 + 2 * math.tanh(1.0))
    # SOFA 4 -> 7, lactate 2 -> 2: -0.125 * 3 = -0.375 (not persistent)
    assert intermediate_reward(4, 7, 2.0, 2.0, CFG) == pytest.approx(-0.375)
    # SOFA 0 -> 0 is not "persistent" (SOFA' must be > 0): only the lactate term, 2 -> 2.5
    assert intermediate_reward(0, 0, 2.0, 2.5, CFG) == pytest.approx(-2 * math.tanh(0.5))
    # SOFA 8 -> 5, lactate 4 -> 4: +0.375
    assert intermediate_reward(8, 5, 4.0, 4.0, CFG) == pytest.approx(0.375)


def test_terminal_reward():
    assert terminal_reward(np.array([0, 1]), CFG).tolist() == [15.0, -15.0]


def test_episode_rewards_intermediate_then_terminal():
    ep = np.array([7, 7, 7, 9, 9])
    sofa = np.array([5, 5, 3, 2, 4], dtype=float)
    lac = np.array([4.0, 3.0, 3.0, 1.0, 1.5])
    outcome = np.array([0, 0, 0, 1, 1])
    r = episode_rewards(ep, sofa, lac, outcome, CFG)
    expected = [
        -0.025 + 0 - 2 * math.tanh(-1.0),  # 5->5 persistent, lactate 4->3
        -0.125 * (3 - 5) - 2 * math.tanh(0.0),  # 5->3
        15.0,  # last step of a survivor
        -0.125 * 2 - 2 * math.tanh(0.5),  # 2->4, 1.0->1.5
        -15.0,  # last step of a death
    ]
    assert r.tolist() == pytest.approx(expected)


def test_reward_is_configurable():
    cfg = RewardConfig(c0_persistent_sofa=0.0, c1_sofa_change=-1.0, c2_lactate_change=0.0, terminal_survive=1, terminal_die=-1)
    r = episode_rewards(np.array([1, 1]), np.array([2.0, 5.0]), np.array([1.0, 9.0]), np.array([1, 1]), cfg)
    assert r.tolist() == [-3.0, -1.0]
