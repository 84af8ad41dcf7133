"""Off-policy estimators and FQE: hand values, on-policy identities, unbiasedness, bootstrap, tabular FQE."""

import numpy as np
import pytest

from sepsis_rl.cohort.spec import N_ACTIONS
from sepsis_rl.eval.fqe import FQEConfig, fit_fqe, fqe_value, next_row_probs
from sepsis_rl.eval.logged import LoggedData
from sepsis_rl.eval.ope import (
    Episodes,
    all_estimates,
    bootstrap_counts,
    doubly_robust,
    importance_sampling,
    kish_ess,
    mean_estimate,
    per_decision_is,
    weighted_doubly_robust,
    weighted_importance_sampling,
    weighted_per_decision_is,
)

# ---- a 2-step, 2-action example computed by hand ---------------------------------------------------------
# Stay 0: two steps, rewards 1 then 2, pi_b = 0.5 both, pi_e = 0.8 then 0.4 -> rho 1.6, 0.8; w 1.6, 1.28.
# Stay 1: one step, reward 3, pi_b = 0.5, pi_e = 0.2 -> rho 0.4; w 0.4 (frozen in the absorbing state).
# gamma 0.9: G0 = 1 + 0.9 * 2 = 2.8, G1 = 3.


def _hand_episodes(with_q: bool = True) -> Episodes:
    q = np.array([0.5, 1.0, 2.0]) if with_q else None
    v = np.array([0.7, 1.5, 1.0]) if with_q else None
    return Episodes.from_rows(np.array([0, 0, 1]), np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.5, 0.5]),
                              np.array([0.8, 0.4, 0.2]), gamma=0.9, q_logged=q, v_state=v)


def test_estimators_match_hand_computed_values():
    ep = _hand_episodes()
    # IS = (1.28 * 2.8 + 0.4 * 3) / 2
    assert importance_sampling(ep, n_boot=10).value == pytest.approx(2.392)
    # WIS = (1.28 * 2.8 + 0.4 * 3) / (1.28 + 0.4)
    assert weighted_importance_sampling(ep, n_boot=10).value == pytest.approx(4.784 / 1.68)
    # PDIS = ((1.6 * 1 + 0.9 * 1.28 * 2) + 0.4 * 3) / 2
    assert per_decision_is(ep, n_boot=10).value == pytest.approx(2.552)
    # WPDIS: t0 (1.6 * 1 + 0.4 * 3) / (1.6 + 0.4) = 1.4; t1 (1.28 * 2 + 0.4 * 0) / (1.28 + 0.4)
    assert weighted_per_decision_is(ep, n_boot=10).value == pytest.approx(1.4 + 0.9 * 2.56 / 1.68)
    # DR stay 0: [1.6 (1 - 0.5) + 0.7] + 0.9 [1.28 (2 - 1) + 1.6 * 1.5] = 4.812; stay 1: 0.4 (3 - 2) + 1.0 = 1.4
    assert doubly_robust(ep, n_boot=10).value == pytest.approx((4.812 + 1.4) / 2)
    # WDR: t0 (1.6 * 0.5 + 0.4 * 1) / 2 + (0.7 + 1.0) / 2; t1 (1.28 * 1) / 1.68 + (1.6 * 1.5) / (1.6 + 0.4)
    assert weighted_doubly_robust(ep, n_boot=10).value == pytest.approx(0.6 + 0.85 + 0.9 * (1.28 / 1.68 + 1.2))
    # Kish ESS of the trajectory weights (1.28, 0.4)
    assert importance_sampling(ep, n_boot=10).ess == pytest.approx(1.68 ** 2 / (1.28 ** 2 + 0.4 ** 2))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="behaviour_prob must be in .* row 1"):
        Episodes.from_rows(np.array([0, 0]), np.ones(2), np.array([0.5, 0.0]), np.ones(2))
    with pytest.raises(ValueError, match="sorted"):
        Episodes.from_rows(np.array([1, 0]), np.ones(2), np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="Q-model"):
        doubly_robust(_hand_episodes(with_q=False))
    assert set(all_estimates(_hand_episodes(with_q=False), n_boot=5)) == {"is", "wis", "pdis", "wpdis"}


# ---- synthetic logged data with exact propensities ------------------------------------------------------

def _logged(rng: np.random.Generator, n_episodes: int, max_len: int = 8) -> tuple[LoggedData, np.ndarray]:
    """Variable-length stays, a stochastic behaviour policy with known [N, 25] probabilities."""
    lens = rng.integers(1, max_len + 1, n_episodes)
    ep = np.repeat(np.arange(n_episodes), lens)
    n = len(ep)
    steps = np.arange(n) - np.r_[0, np.cumsum(lens)[:-1]][ep]
    probs = rng.dirichlet(np.ones(N_ACTIONS) * 0.5, n)
    actions = np.array([rng.choice(N_ACTIONS, p=p) for p in probs])
    dones = np.zeros(n, bool)
    dones[np.cumsum(lens) - 1] = True
    rewards = rng.normal(0, 1, n) + dones * rng.choice([-15.0, 15.0], n)
    states = rng.normal(size=(n, 3))
    data = LoggedData(spec=None, episode_ids=ep + 100, steps=steps, states=states, actions=actions,
                      rewards=rewards, dones=dones, outcome=np.zeros(n, np.int64),
                      behaviour_prob=probs[np.arange(n), actions])
    return data, probs


def test_on_policy_identities_hold_exactly():
    data, probs = _logged(np.random.default_rng(0), 300)
    gamma = 0.97
    ep = Episodes.from_logged(data, probs, gamma, q_values=np.zeros_like(probs))
    assert np.array_equal(ep.ratios, np.ones_like(ep.ratios))
    mean_return = data.returns(gamma).mean()
    est = all_estimates(ep, n_boot=200, seed=3)
    for name in ("is", "wis", "pdis", "wpdis", "dr", "wdr"):  # Q = 0: DR and WDR reduce to PDIS and WPDIS
        assert est[name].value == pytest.approx(mean_return, rel=1e-12, abs=1e-12), name
        assert est[name].ess == pytest.approx(300)
    # WIS and WPDIS equal the mean return in every resample too (same patients, normalisers recomputed)
    ref = mean_estimate(data.returns(gamma), n_boot=200, seed=3)
    for name in ("wis", "wpdis"):
        assert est[name].ci == pytest.approx(ref.ci, rel=1e-10)


def test_is_and_dr_are_unbiased_on_a_two_step_bandit():
    """pi_b uniform over 2 actions at each of 2 steps; s1 = a0; DR with a deliberately wrong Q stays unbiased."""
    rng = np.random.default_rng(1)
    gamma, reps, n = 0.9, 1500, 40
    g = np.array([0.0, 1.0])  # reward at step 0 by a0
    f = np.array([[1.0, -2.0], [3.0, 0.5]])  # mean reward at step 1 by (s1 = a0, a1)
    pe0 = np.array([0.2, 0.8])
    pe1 = np.array([[0.7, 0.3], [0.1, 0.9]])  # pi_e(a1 | s1)
    truth = float(pe0 @ (g + gamma * (pe1 * f).sum(axis=1)))
    q_wrong0 = np.array([5.0, -1.0])  # Q(s0, a0), wrong on purpose
    q_wrong1 = np.array([[0.0, 2.0], [-1.0, 4.0]])  # Q(s1, a1), wrong on purpose
    v0 = float(pe0 @ q_wrong0)
    is_vals, dr_vals = [], []
    for _ in range(reps):
        a0, a1 = rng.integers(0, 2, n), rng.integers(0, 2, n)
        r0 = g[a0] + rng.normal(0, 1, n)
        r1 = f[a0, a1] + rng.normal(0, 1, n)
        idx = np.repeat(np.arange(n), 2)
        rewards = np.stack([r0, r1], 1).ravel()
        pe = np.stack([pe0[a0], pe1[a0, a1]], 1).ravel()
        q = np.stack([q_wrong0[a0], q_wrong1[a0, a1]], 1).ravel()
        v = np.stack([np.full(n, v0), (pe1[a0] * q_wrong1[a0]).sum(axis=1)], 1).ravel()
        ep = Episodes.from_rows(idx, rewards, np.full(2 * n, 0.5), pe, gamma, q, v)
        is_vals.append(importance_sampling(ep, n_boot=1).value)
        dr_vals.append(doubly_robust(ep, n_boot=1).value)
    for vals in (np.array(is_vals), np.array(dr_vals)):
        se = vals.std(ddof=1) / np.sqrt(reps)
        assert abs(vals.mean() - truth) < 3 * se, (vals.mean(), truth, se)


def test_bootstrap_ci_covers_with_the_right_width():
    rng = np.random.default_rng(2)
    n, sigma, mu = 400, 2.0, 1.0
    covered, widths = 0, []
    for rep in range(150):
        est = mean_estimate(rng.normal(mu, sigma, n), n_boot=200, seed=rep)
        covered += est.ci[0] <= mu <= est.ci[1]
        widths.append(est.ci[1] - est.ci[0])
    expected_width = 2 * 1.96 * sigma / np.sqrt(n)
    assert 0.85 * expected_width < np.mean(widths) < 1.15 * expected_width
    assert 0.88 <= covered / 150 <= 0.995
    counts = bootstrap_counts(50, 7, seed=0)
    assert counts.shape == (7, 50) and np.all(counts.sum(axis=1) == 50)
    assert kish_ess(np.array([1.0, 0.0, 0.0])) == 1.0 and kish_ess(np.ones(5)) == 5.0


# ---- FQE on a small tabular MDP ---------------------------------------------------------------------------

def test_fqe_recovers_the_value_of_a_tabular_mdp():
    """3 states (one-hot), 2 actions; each step ends the stay with prob end[s, a], else moves by P[s, a]."""
    rng = np.random.default_rng(4)
    gamma = 0.9
    r_mean = np.array([[1.0, 0.0], [-1.0, 2.0], [0.5, 0.5]])
    end = np.array([[0.2, 0.3], [0.4, 0.25], [0.5, 0.3]])
    trans = np.array([[[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]],
                      [[0.3, 0.3, 0.4], [0.8, 0.1, 0.1]],
                      [[0.2, 0.2, 0.6], [0.1, 0.7, 0.2]]])
    pi = np.array([[0.3, 0.7], [0.8, 0.2], [0.5, 0.5]])
    # V = sum_a pi (r + gamma (1 - end) P V)
    r_pi = (pi * r_mean).sum(1)
    p_pi = np.einsum("sa,sa,sat->st", pi, 1 - end, trans)
    v_true = np.linalg.solve(np.eye(3) - gamma * p_pi, r_pi)

    states, steps, actions, rewards, dones = [], [], [], [], []
    for _ in range(800):
        s, t = 0, 0
        while True:
            a = int(rng.integers(0, 2))
            states.append(s), steps.append(t), actions.append(a)
            rewards.append(r_mean[s, a] + rng.normal(0, 0.5))
            stop = rng.random() < end[s, a] or t == 40
            dones.append(stop)
            if stop:
                break
            s, t = int(rng.choice(3, p=trans[s, a])), t + 1
    onehot = np.eye(3)[np.array(states)]
    target = pi[np.array(states)]
    dones = np.array(dones)
    model = fit_fqe(onehot, np.zeros(len(states)), np.array(actions), np.array(rewards), dones,
                    next_row_probs(target, dones), FQEConfig(gamma=gamma, iterations=30, epochs_per_iteration=2,
                                                             batch_size=256, lr=3e-3))
    # On one-hot states FQE converges to the certainty-equivalent value of the empirical MDP (same data):
    s_arr, a_arr, r_arr = np.array(states), np.array(actions), np.array(rewards)
    nxt = np.r_[s_arr[1:], 0]
    n_sa = np.zeros((3, 2))
    np.add.at(n_sa, (s_arr, a_arr), 1)
    r_hat = np.zeros((3, 2))
    np.add.at(r_hat, (s_arr, a_arr), r_arr)
    p_hat = np.zeros((3, 2, 3))
    np.add.at(p_hat, (s_arr[~dones], a_arr[~dones], nxt[~dones]), 1)
    r_hat, p_hat = r_hat / n_sa, p_hat / n_sa[:, :, None]  # p_hat rows sum to 1 - empirical end rate
    v_emp = np.linalg.solve(np.eye(3) - gamma * np.einsum("sa,sat->st", pi, p_hat), (pi * r_hat).sum(1))
    q_emp = r_hat + gamma * np.einsum("sat,t->sa", p_hat, v_emp)

    est = fqe_value(model, np.eye(3)[[0]], np.zeros(1), pi[[0]], n_boot=10)
    assert est.value == pytest.approx(v_emp[0], abs=0.02)
    assert np.abs(model.q_values(np.eye(3), np.zeros(3)) - q_emp).max() < 0.05  # 2% of max |Q|
    assert v_emp[0] == pytest.approx(v_true[0], abs=0.15)  # and the data pin the true value down


def test_off_policy_estimates_on_a_synthetic_cohort(tmp_path):
    """End to end on a real split: the clinician's propensities give WIS = WPDIS = the logged mean return."""
    from sepsis_rl.cohort.synth import synthesize_cohort
    from sepsis_rl.eval.offpolicy import OPEConfig, off_policy_estimates

    cohort = synthesize_cohort(tmp_path / "cohort", 200, seed=0, progress=False)
    data = LoggedData.from_cohort(cohort, "test")
    rows = np.arange(len(data))
    # exact at the logged action (all the estimators read), the rest of the mass spread over the others
    probs = np.repeat(((1 - data.behaviour_prob) / (N_ACTIONS - 1))[:, None], N_ACTIONS, axis=1)
    probs[rows, data.actions] = data.behaviour_prob
    cfg = OPEConfig(gamma=0.99, n_boot=200, fqe=FQEConfig(iterations=5, min_updates_per_iteration=5))
    est = off_policy_estimates(data, probs, cfg)
    assert set(est) == {"is", "wis", "pdis", "wpdis", "dr", "wdr", "fqe"}
    for name in ("is", "wis", "pdis", "wpdis"):
        assert est[name].value == pytest.approx(data.returns(0.99).mean(), rel=1e-12)
    assert all(np.isfinite(e.value) and e.ci[0] <= e.ci[1] for e in est.values())
    json_ready = {k: v.to_dict() for k, v in est.items()}
    assert json_ready["wis"]["ess"] == pytest.approx(len(data.episode_starts()))
    # FQE fitted on another split: same importance-sampling estimates, a different Q-model
    val = LoggedData.from_cohort(cohort, "val")
    other = off_policy_estimates(data, probs, cfg, fqe_data=(val, np.full((len(val), N_ACTIONS), 1 / N_ACTIONS)))
    assert other["wis"].value == est["wis"].value and other["fqe"].value != est["fqe"].value
