"""Baseline policies: hand-computed WD3QNE targets, guideline rules, calibration metrics, the RLlib transition
converter, and every baseline trained at tiny scale answering valid probability rows."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from sepsis_rl.cohort.spec import N_ACTIONS, ActionBins
from sepsis_rl.cohort.synth import synthesize_cohort
from sepsis_rl.eval.baselines import build_baseline
from sepsis_rl.eval.baselines.behaviour_estimate import expected_calibration_error, fit_temperature
from sepsis_rl.eval.baselines.common import StateEncoder, Transitions, wis_selector
from sepsis_rl.eval.baselines.guideline import GuidelinePolicy
from sepsis_rl.eval.baselines.rllib_policies import RLlibConfig
from sepsis_rl.eval.baselines.wd3qne import (WD3QNEConfig, _tensors, dueling_aggregate, td_loss, train_wd3qne,
                                             wd3qne_target)
from sepsis_rl.eval.logged import LoggedData
from sepsis_rl.eval.policy import DecisionBatch, Policy, check_probs, one_hot


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    d = synthesize_cohort(root / "cohort", 100, seed=0, progress=False)
    return LoggedData.from_cohort(d, "train"), LoggedData.from_cohort(d, "val")


def _assert_valid(policy: Policy, val: LoggedData) -> np.ndarray:
    rows, batch = next(val.batches(64))
    probs = check_probs(policy.action_probs(batch), len(rows), policy.name)
    assert np.allclose(probs.sum(axis=1), 1.0)
    return probs


# --- WD3QNE pieces against hand-computed values -------------------------------------------------------------


def test_dueling_aggregation_subtracts_mean_advantage():
    q = dueling_aggregate(torch.tensor([[2.0]]), torch.tensor([[1.0, 3.0, 5.0]]))
    assert torch.allclose(q, torch.tensor([[0.0, 2.0, 4.0]]))  # 2 + a - mean(a) = 2 + a - 3


Q_ONLINE = torch.tensor([[1.0, 5.0, 2.0]])  # online net picks action 1 at s'
Q_TARGET = torch.tensor([[4.0, 3.0, 6.0]])  # target net's own argmax is action 2


def _target(weighted: bool, expert: bool = False, next_clin: int = 0, done: bool = False) -> float:
    y = wd3qne_target(Q_ONLINE, Q_TARGET, torch.tensor([1.0]), torch.tensor([done]), torch.tensor([next_clin]),
                      torch.tensor([expert]), gamma=0.5, weighted=weighted)
    return float(y[0])


def test_double_dqn_target_evaluates_the_online_choice_with_the_target_net():
    assert _target(weighted=False) == pytest.approx(1.0 + 0.5 * 3.0)  # Q'(s', argmax Q) = 3, not max Q' = 6
    assert _target(weighted=False, done=True) == pytest.approx(1.0)


def test_weighted_target_mixes_double_and_max_estimates_by_softmax_weight():
    w = math.exp(3) / (math.exp(3) + math.exp(6))  # p(a_dd) / (p(a_dd) + p(a_max)) under softmax(Q')
    assert _target(weighted=True) == pytest.approx(1.0 + 0.5 * (w * 3.0 + (1 - w) * 6.0), rel=1e-6)
    same = wd3qne_target(Q_TARGET, Q_TARGET, torch.tensor([0.0]), torch.tensor([False]), torch.tensor([0]),
                         torch.tensor([False]), gamma=1.0)
    assert float(same[0]) == pytest.approx(6.0)  # both estimators pick the same action: its value


def test_expertise_uses_the_clinicians_next_action_for_mild_patients():
    assert _target(weighted=True, expert=True, next_clin=0) == pytest.approx(1.0 + 0.5 * 4.0)  # Q'(s', a'_c=0)
    assert _target(weighted=True, expert=True, next_clin=-1) == pytest.approx(_target(weighted=True))  # no a'_c


class _Table(torch.nn.Module):
    """Q(s, .) = one-hot(s) @ table: a network with known outputs."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs @ self.table


def test_expertise_changes_the_td_loss_only_on_rows_below_the_sofa_threshold():
    online = _Table([[0.0, 0.0, 0.0], [1.0, 5.0, 2.0]])  # state 1 = s'
    target = _Table([[0.0, 0.0, 0.0], [4.0, 3.0, 6.0]])
    eye = torch.eye(2)
    tr = Transitions(obs=np.stack([eye[0].numpy()] * 2), actions=np.array([0, 0]),
                     rewards=np.array([1.0, 1.0], np.float32), next_obs=np.stack([eye[1].numpy()] * 2), dones=np.array([False, False]),
                     next_actions=np.array([0, 0]), episode_ids=np.array([0, 1]), sofa=np.array([2.0, 9.0]))
    with_exp, without = WD3QNEConfig(gamma=0.5), WD3QNEConfig(gamma=0.5, expertise=False)
    assert _tensors(tr, with_exp)["expert"].tolist() == [True, False]
    assert _tensors(tr, without)["expert"].tolist() == [False, False]
    w = math.exp(3) / (math.exp(3) + math.exp(6))
    y_model = 1.0 + 0.5 * (w * 3.0 + (1 - w) * 6.0)
    y_clin = 1.0 + 0.5 * 4.0
    huber = lambda d: 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5  # Q(s, a) = 0 here
    loss_exp = td_loss(online, target, _tensors(tr, with_exp), with_exp).item()
    loss_no = td_loss(online, target, _tensors(tr, without), without).item()
    assert loss_exp == pytest.approx((huber(y_clin) + huber(y_model)) / 2, rel=1e-6)
    assert loss_no == pytest.approx(huber(y_model), rel=1e-6)


def _two_step_mdp(train: LoggedData, n: int = 150, sofa: float = 9.0) -> LoggedData:
    """Step 0: action 24 leads to a good state (+10 at the end), action 0 to a bad one (-10). The last step's
    action does not matter and is logged uniformly, so every action's value there is learnt from data."""
    base = train.states[0]
    last = np.random.default_rng(0).integers(0, N_ACTIONS, n)
    names = train.feature_names
    rows, eps, steps, acts, rews = [], [], [], [], []
    for e in range(n):
        good = e % 2 == 0
        s0, s1 = base.copy(), base.copy()
        s0[names.index("MeanBP")], s1[names.index("MeanBP")] = 60.0, 80.0 if good else 45.0
        for s in (s0, s1):
            s[names.index("SOFA")] = sofa  # >= 4: the model's own target; < 4: the clinician's next action
        rows += [s0, s1]
        eps += [e, e]
        steps += [0, 1]
        acts += [24 if good else 0, int(last[e])]
        rews += [0.0, 10.0 if good else -10.0]
    return replace(train, episode_ids=np.array(eps), steps=np.array(steps), states=np.array(rows),
                   actions=np.array(acts), rewards=np.array(rews), dones=np.array([False, True] * n),
                   outcome=np.zeros(2 * n, np.int64), behaviour_prob=np.full(2 * n, 0.5))


@pytest.mark.parametrize("sofa", [9.0, 2.0])
def test_wd3qne_learns_the_better_action_on_a_tiny_deterministic_mdp(cohort, sofa):
    data = _two_step_mdp(cohort[0], sofa=sofa)
    cfg = WD3QNEConfig(trunk=(32,), stream_hidden=32, lr=3e-3, batch_size=128, steps=300, target_every=50,
                       eval_every=300)
    policy = train_wd3qne(data, data, cfg)
    q = policy.q_values(data.decisions(np.array([0])))[0]
    assert q[24] - q[0] > 10.0  # truth: 0.99 * 10 - 0.99 * (-10) = 19.8
    if sofa < 4:
        # The expertise target bootstraps from the logged next action (no max over barely-seen actions), so
        # the values themselves are right; with the max target (SOFA >= 4) the ranking is right but the values
        # are overestimated (the max picks up action 24's value generalised from the admission state).
        assert q[24] == pytest.approx(9.9, abs=1.5) and q[0] == pytest.approx(-9.9, abs=1.5)


# --- selector --------------------------------------------------------------------------------------------------


class _Fixed(Policy):
    def __init__(self, action: int) -> None:
        self.action = action

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        return one_hot(np.full(len(batch), self.action))


def test_wis_selector_hand_values(cohort):
    data = _two_step_mdp(cohort[0], n=4)
    data = replace(data, actions=np.where(data.steps == 1, 12, data.actions))
    # A policy always choosing 24 agrees with the good stays at step 0 but with no stay at step 1 (12 was logged).
    assert wis_selector(_Fixed(24), data) == float("-inf")
    data = replace(data, actions=np.where(data.steps == 1, 24, data.actions))
    assert wis_selector(_Fixed(24), data, gamma=0.5) == pytest.approx(0.5 * 10.0)  # only good stays weigh


class _Logged(Policy):
    """Gives each logged row's action exactly its recorded behaviour probability (the rest spread evenly)."""

    def __init__(self, data: LoggedData) -> None:
        self.lookup = {(int(e), int(t)): (int(a), float(p)) for e, t, a, p in
                       zip(data.episode_ids, data.steps, data.actions, data.behaviour_prob)}

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        out = np.zeros((len(batch), N_ACTIONS))
        for i, (e, t) in enumerate(zip(batch.episode_ids, batch.steps)):
            a, p = self.lookup[(int(e), int(t))]
            out[i] = (1 - p) / (N_ACTIONS - 1)
            out[i, a] = p
        return out


def test_wis_selector_of_the_behaviour_policy_is_the_mean_logged_return(cohort):
    val = cohort[1]
    assert wis_selector(_Logged(val), val, gamma=0.9) == pytest.approx(val.returns(0.9).mean(), rel=1e-9)


# --- guideline -------------------------------------------------------------------------------------------------


def test_guideline_rules_on_hand_made_states(cohort):
    spec = replace(cohort[0].spec, fluid=ActionBins("fluid", "mL/4h", (250.0, 500.0, 1000.0), (0, 125, 375, 750, 1500)),
                   vaso=ActionBins("vaso", "mcg/kg/min", (0.08, 0.2, 0.45), (0, 0.04, 0.14, 0.325, 0.725)))
    names = tuple(spec.feature_names)
    cases = [  # (step, MAP, lactate, P/F, balance, input_total, weight, last action) -> (fluid bin, vaso bin)
        ((0, 55, 5.0, 300, 500, 100, 70, -1), (4, 2)),  # F2: 30*70-100 = 2000 mL; V1: start at 0.1 -> bin 2
        ((3, 70, 1.5, 300, 2000, 3000, 70, 5 * 1 + 2), (0, 2)),  # F5 none; V2 hold
        ((3, 80, 3.0, 300, 2000, 3000, 70, 5 * 1 + 2), (1, 1)),  # F4 250 mL; V3 wean one bin
        ((2, 50, 5.0, 150, 2000, 3000, 70, 5 * 2 + 1), (0, 3)),  # F1 P/F < 200 stops fluid; MAP < 55: +2 bins
        ((2, 60, 3.0, 300, 6000, 7000, 70, 0), (0, 2)),  # F1 balance > 5 L; V1 start
        ((1, 60, 2.5, 300, 1000, 3000, 70, 4), (2, 4)),  # F3 500 mL challenge; escalation capped at bin 4
        ((0, 70, 4.5, 300, 0, 0, 100, -1), (4, 0)),  # F2 by lactate >= 4 alone: 3000 mL; no vasopressor
    ]
    hist = np.tile(cohort[0].states[0], (len(cases), 1, 1))
    for i, ((step, mapv, lac, pf, bal, given, wt, _), _) in enumerate(cases):
        for name, v in (("MeanBP", mapv), ("Arterial_lactate", lac), ("PaO2_FiO2", pf), ("cumulated_balance", bal),
                        ("input_total", given), ("Weight_kg", wt)):
            hist[i, 0, names.index(name)] = v
    batch = DecisionBatch(np.arange(len(cases)), np.array([c[0][0] for c in cases]), hist,
                          np.ones(len(cases), np.int64), np.array([c[0][7] for c in cases]), names)
    policy = GuidelinePolicy(spec)
    expected = np.array([5 * f + v for _, (f, v) in cases])
    assert policy.actions(batch).tolist() == expected.tolist()
    assert np.array_equal(policy.action_probs(batch), one_hot(expected))


# --- behaviour estimate ----------------------------------------------------------------------------------------


def test_ece_on_a_hand_made_example():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    # bin of 0.9: accuracy 1/2 vs confidence 0.9; bin of 0.6: accuracy 1 vs 0.6; each holds half the rows
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])) == pytest.approx(0.0)


def test_temperature_scaling_recovers_an_overconfidence_factor():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (4000, 5))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = (p.cumsum(axis=1) < rng.random((4000, 1))).sum(axis=1)
    assert fit_temperature(torch.tensor(3.0 * z), torch.tensor(labels)) == pytest.approx(3.0, rel=0.15)


# --- every baseline at tiny scale -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["wd3qne", "cql", "bcq", "guideline", "behaviour_estimate"])
def test_each_baseline_trains_and_answers_probability_rows(cohort, name):
    train, val = cohort
    policy = build_baseline(name, train, val, "tiny")
    assert policy.name == name
    probs = _assert_valid(policy, val)
    if name in ("wd3qne", "cql", "bcq", "guideline"):
        assert set(np.unique(probs)) <= {0.0, 1.0}  # greedy policies answer one-hot rows
    if name in ("wd3qne", "cql", "bcq"):
        assert policy.info["selected_step"] in [s for s, _ in policy.info["val_history"]]
        assert policy.info["val_selection_value"] == max(v for _, v in policy.info["val_history"])
    if name == "behaviour_estimate":
        for split in ("train", "val"):
            assert 0.0 <= policy.info[split]["accuracy"] <= 1.0 and 0.0 <= policy.info[split]["ece"] <= 1.0
        assert policy.info["temperature"] > 0


def test_transition_table_follows_rllibs_offline_columns(cohort):
    from sepsis_rl.eval.baselines.rllib_policies import TRANSITION_COLUMNS, transition_table

    train = cohort[0]
    enc = StateEncoder.fit(train)
    table = transition_table(train, enc)
    assert tuple(table.column_names) == TRANSITION_COLUMNS
    obs = np.stack(table.column("obs").to_numpy(zero_copy_only=False))
    new_obs = np.stack(table.column("new_obs").to_numpy(zero_copy_only=False))
    done = table.column("terminateds").to_numpy(zero_copy_only=False)
    assert np.array_equal(done, train.dones) and not table.column("truncateds").to_numpy(zero_copy_only=False).any()
    cont = np.flatnonzero(~done)
    assert np.array_equal(new_obs[cont], obs[cont + 1])  # the next row of the same stay
    assert obs.shape == (len(train), enc.dim)
    assert np.array_equal(table.column("actions").to_numpy(), train.actions)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _train_and_answer(name: str, train: LoggedData, val: LoggedData, cfg: RLlibConfig) -> tuple[np.ndarray, dict]:
    """Inside a Ray task, as ``sepsis-rl evaluate`` runs it (``eval/run.py``): Ray Data's executor threads die
    with the worker process instead of outliving ``algo.stop()`` in the test process."""
    policy = build_baseline(name, train, val, cfg)
    rows, batch = next(val.batches(64))
    return check_probs(policy.action_probs(batch), len(rows), policy.name), policy.info


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bc", "marwil"])
def test_rllib_baselines_train_through_ray_data(cohort, ray_session, name):
    import ray

    from sepsis_rl.eval.run import task_cpus

    train, val = cohort
    cfg = replace(RLlibConfig.tiny(), steps=10, iters_per_eval=10)  # one algo.train() call: Ray Data is slow to start
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    task = ray.remote(max_retries=0)(_train_and_answer).options(num_cpus=task_cpus(name))
    probs, info = ray.get(task.remote(name, train, val, cfg), timeout=600)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert (probs > 0).all()  # a softmax over the module's logits, not a one-hot
    assert len(info["val_history"]) == 1 and math.isfinite(info["val_selection_value"])
    assert info["final_losses"]["policy_loss"] > 0
