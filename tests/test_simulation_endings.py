"""Expected endings: the same expected return as sampled endings, computed instead of drawn (hand-checked)."""

import numpy as np
import pytest

from sepsis_rl.cohort.reward import RewardConfig
from world_model.simulation import SimulationConfig, WorldModelSimulator


class ConstantDynamics:
    """Nothing changes; every step the patient dies with p=0.1 and is discharged with p=0.2."""

    feature_names = ("SOFA", "Arterial_lactate")
    window = 1

    def predict(self, history: np.ndarray, action: np.ndarray) -> dict[str, np.ndarray]:
        b = len(history)
        cur = history[:, -1, :]
        return {"mean": cur, "std": np.zeros_like(cur), "epistemic_std": np.zeros_like(cur),
                "p_death": np.full(b, 0.1), "p_discharge": np.full(b, 0.2)}


def _play(endings: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    sim = WorldModelSimulator(ConstantDynamics(), SimulationConfig(max_steps=2, seed=3, endings=endings))
    ids = np.arange(n)
    sim.reset(ids, np.tile([[5.0, 2.0]], (n, 1)))
    ret, deaths, live = np.zeros(n), np.zeros(n), ids
    while live.size:
        res = sim.step(live, np.zeros(live.size, dtype=np.int64))
        ret[live] += res.reward
        deaths[live] += res.death_mass
        live = live[~res.done]
    return ret, deaths


def test_expected_endings_pay_the_hand_computed_expectation():
    r = RewardConfig()
    step = 0.1 * r.terminal_die + 0.2 * r.terminal_survive + 0.7 * r.c0_persistent_sofa  # SOFA 5 stays: -0.025
    ret, deaths = _play("expected", 4)
    assert ret == pytest.approx(np.full(4, step + 0.7 * step))  # the second step only if no ending at the first
    assert deaths == pytest.approx(np.full(4, 0.1 + 0.7 * 0.1))


def test_expected_endings_match_the_mean_of_sampled_endings():
    exp_ret, exp_deaths = _play("expected", 1)
    ret, deaths = _play("sample", 40_000)
    assert set(np.unique(deaths)) == {0.0, 1.0}  # sampled: a death is a death
    assert ret.mean() == pytest.approx(exp_ret[0], abs=0.15)  # MC standard error ~0.07
    assert deaths.mean() == pytest.approx(exp_deaths[0], abs=0.01)
    assert ret.std() > 5 and np.ptp(exp_ret) == 0  # what expected endings remove


def test_endings_must_be_named():
    with pytest.raises(ValueError, match="endings"):
        SimulationConfig(endings="never")
