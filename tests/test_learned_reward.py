"""A cohort's own reward reaches the simulator: its formula coefficients, or the fit of its reward column."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sepsis_rl.cohort.reward import RewardConfig
from sepsis_rl.cohort.spec import CohortSpec
from world_model.learned_reward import LearnedReward, reward_column
from world_model.simulation import SimulationConfig, WorldModelSimulator, cohort_reward

TERMINAL_DIE, TERMINAL_SURVIVE = -11.0, 7.0


def _true_shaping(cur: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """The column's hidden rule: 2 - 0.25 (MAP' - MAP) + 0.1 lactate (columns: map, lactate)."""
    return 2.0 - 0.25 * (nxt[:, 0] - cur[:, 0]) + 0.1 * cur[:, 1]


def _stays(n_stays: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"episode_id": [], "step": [], "map": [], "lactate": [], "reward": [], "outcome": []}
    for s in range(n_stays):
        length, died = int(rng.integers(2, 6)), int(rng.random() < 0.4)
        states = np.column_stack([rng.normal(70, 8, length), rng.uniform(0.5, 6, length)])
        rewards = list(_true_shaping(states[:-1], states[1:])) + [TERMINAL_DIE if died else TERMINAL_SURVIVE]
        for t in range(length):
            rows["episode_id"].append(s)
            rows["step"].append(t)
            rows["map"].append(states[t, 0])
            rows["lactate"].append(states[t, 1])
            rows["reward"].append(rewards[t])
            rows["outcome"].append(died)
    return pa.table(rows)


class _Spec:
    """The two attributes the fit reads."""

    feature_names = ["map", "lactate"]
    reward = {"column": "r"}


def test_fit_recovers_a_linear_reward_and_the_terminal_values():
    model = LearnedReward.fit(_stays(200, 0), _stays(50, 1), _Spec())  # type: ignore[arg-type]
    assert model.terminal_die == pytest.approx(TERMINAL_DIE) and model.terminal_survive == pytest.approx(TERMINAL_SURVIVE)
    assert model.val_r2 is not None and model.val_r2 > 0.999
    cur, nxt = np.array([[60.0, 1.0], [80.0, 4.0]]), np.array([[70.0, 1.0], [76.0, 3.0]])
    assert np.allclose(model.shaping(cur, nxt), [2.0 - 2.5 + 0.1, 2.0 + 1.0 + 0.4], atol=0.02)  # by hand: 0.4, 3.4
    assert np.array_equal(model.terminal(np.array([True, False])), [TERMINAL_DIE, TERMINAL_SURVIVE])
    assert LearnedReward.from_dict(model.to_dict()) == model


def test_fit_needs_both_endings():
    table = _stays(30, 0)
    survivors = table.filter(pc.equal(table.column("outcome"), 0))
    with pytest.raises(ValueError, match="end in death and in survival"):
        LearnedReward.fit(survivors, None, _Spec())  # type: ignore[arg-type]


class _Model:
    """Enough of a world model for ``cohort_reward``."""

    def __init__(self, spec, learned=None):
        self.spec, self.learned_reward = spec, learned


def test_the_simulator_pays_the_cohorts_reward(tiny_world):
    _, model = tiny_world
    spec: CohortSpec = model.spec
    assert reward_column(spec) is None and cohort_reward(model) == RewardConfig()  # the synthetic cohort: the formula
    custom = replace(spec, reward={**RewardConfig().to_dict(), "terminal_survive": 100.0})
    assert cohort_reward(_Model(custom)).terminal_survive == 100.0  # a cohort's own coefficients, not the default
    assert cohort_reward(_Model(custom), RewardConfig()) == RewardConfig()  # an explicit override wins

    column = replace(spec, reward={"column": "r"})
    with pytest.raises(ValueError, match="reward is its column 'r' but this world model carries no learned reward"):
        cohort_reward(_Model(column))
    learned = LearnedReward(mean=tuple([0.0] * len(spec.feature_names)), scale=tuple([1.0] * len(spec.feature_names)),
                            weights=tuple([0.0] * 2 * len(spec.feature_names)), bias=0.5, terminal_die=-3.0,
                            terminal_survive=4.0)
    model.spec, model.learned_reward = column, learned
    try:
        sim = WorldModelSimulator(model, SimulationConfig(stochastic=False, max_steps=1))
        history = np.tile(np.asarray(model.normalizer.raw_mean, dtype=np.float64), (2, 1, 1))
        sim.reset(np.array([0, 1]), history)
        res = sim.step(np.array([0, 1]), np.array([0, 12]))
        paid = np.where(res.died, -3.0, np.where(res.discharged, 4.0, 0.5))
        assert np.allclose(res.reward, paid)  # never the default formula's +-15 or SOFA/lactate shaping
    finally:
        model.spec, model.learned_reward = spec, None


def test_a_world_model_trained_on_a_reward_column_carries_its_fit(tmp_path):
    from test_importers import GENERIC_SPEC, generic_frame, run_cli, write_generic
    from world_model.checkpoint import load_world_model, save_world_model
    from world_model.presets import get_preset
    from world_model.train import train_world_model

    df = generic_frame(n_stays=150, seed=3).sort_values(["stay", "t"]).reset_index(drop=True)
    nxt_map = df.groupby("stay")["map"].shift(-1)
    df["r"] = np.where(nxt_map.isna(), np.where(df.died == 1, TERMINAL_DIE, TERMINAL_SURVIVE),
                       2.0 - 0.25 * (nxt_map - df["map"]) + 0.1 * df["lactate"])
    data, spec_path = write_generic(tmp_path, df, dict(GENERIC_SPEC, reward_column="r"))
    assert run_cli("import", "--format", "generic", "--input", str(data), "--spec", str(spec_path),
                   "--out", str(tmp_path / "c")) == 0
    model = train_world_model(tmp_path / "c", get_preset("tiny")).model
    learned = model.learned_reward
    assert learned is not None and learned.val_r2 is not None and learned.val_r2 > 0.99
    assert learned.terminal_die == pytest.approx(TERMINAL_DIE) and learned.terminal_survive == pytest.approx(TERMINAL_SURVIVE)
    again = load_world_model(save_world_model(model, tmp_path / "wm"))
    assert again.learned_reward == learned
    assert cohort_reward(again) is again.learned_reward
