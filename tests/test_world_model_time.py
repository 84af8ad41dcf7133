"""The world model sees the time since admission; the simulator feeds it the stay's true clock."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sepsis_rl.cohort.spec import N_ACTIONS
from world_model.network import ModelConfig, time_features
from world_model.simulation import SimulationConfig, WorldModelSimulator


class _ClockModel:
    """A stand-in world model that records the time it is given and returns a fixed prediction."""

    feature_names = ["MeanBP", "Arterial_lactate", "SOFA"]
    window = 2
    config = ModelConfig(window=2, time_input=True)

    def __init__(self) -> None:
        self.times: list[list[int]] = []

    def predict(self, history, action, mask=None, time=None):  # noqa: ANN001
        self.times.append(np.asarray(time).tolist())
        b = len(action)
        return {"mean": history[:, -1].copy(), "std": np.zeros((b, 3)), "epistemic_std": np.zeros((b, 3)),
                "p_death": np.full(b, 0.1), "p_discharge": np.full(b, 0.2)}


def test_time_features_by_hand():
    f = time_features(torch.tensor([0, 2, 3, 40]))
    np.testing.assert_allclose(f.numpy(), [[0, 0], [0.1, 0], [0.15, 1], [1.0, 1]])


def test_simulator_passes_the_stay_clock_to_step_and_simulate():
    model = _ClockModel()
    sim = WorldModelSimulator(model, SimulationConfig(stochastic=False))  # type: ignore[arg-type]
    hist = np.tile(np.array([70.0, 2.0, 5.0]), (2, 1, 1))
    sim.reset(np.array([1, 2]), hist, start_steps=np.array([0, 7]))
    sim.step(np.array([1, 2]), np.array([0, 0]))
    assert model.times[-1] == [0, 7]
    res = sim.simulate(np.array([1, 2]), np.array([[0, 5], [0, 5]]), horizon=2)
    assert model.times[-2:] == [[1, 1, 8, 8], [2, 2, 9, 9]]
    # expected return over the horizon: alive * (p_death R_d + p_dis R_s + p_stay * 0); nothing after ending
    r_step = 0.1 * -15 + 0.2 * 15 + 0.7 * -0.025  # persistent SOFA costs 0.025 while the stay goes on
    np.testing.assert_allclose(res.expected_return, r_step * (1 + 0.7), atol=1e-9)
    np.testing.assert_allclose(res.risk_of_death, 0.1 + 0.7 * 0.1)
    np.testing.assert_allclose(res.risk_of_discharge, 0.2 + 0.7 * 0.2)


def test_simulate_follows_a_continuation_policy():
    seen: list[np.ndarray] = []
    model = _ClockModel()

    class Recording(_ClockModel):
        def predict(self, history, action, mask=None, time=None):  # noqa: ANN001
            seen.append(np.asarray(action).copy())
            return _ClockModel.predict(model, history, action, mask, time)

    sim = WorldModelSimulator(Recording(), SimulationConfig(stochastic=False))  # type: ignore[arg-type]
    sim.reset(np.array([3]), np.tile(np.array([70.0, 2.0, 5.0]), (1, 1, 1)))
    sim.simulate(np.array([3]), np.array([[24, 6]]), horizon=3, continuation=lambda w, a: np.zeros_like(a))
    assert [s.tolist() for s in seen] == [[24, 6], [0, 0], [0, 0]]
    with pytest.raises(ValueError):
        sim.simulate(np.array([3]), np.array([[N_ACTIONS]]), horizon=1)
