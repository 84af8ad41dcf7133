"""The judge: common random numbers, the fair truth API and the clinical calibration of the simulator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sepsis_rl.cli import main
from sepsis_rl.cohort.noise import KeyedNoise
from sepsis_rl.cohort.simulator import SepsisSimulator
from sepsis_rl.cohort.store import read_split
from sepsis_rl.cohort.synth import GroundTruth, synthesize, synthesize_cohort, true_policy_values
from sepsis_rl.cohort.truth import play, true_summary
from sepsis_rl.eval.logged import LoggedData
from sepsis_rl.eval.policies import ConstantPolicy, RandomPolicy, SyntheticClinician, no_treatment
from sepsis_rl.eval.policy import DecisionBatch, Policy

SIM = SepsisSimulator()
NAMES = SIM.feature_names


@pytest.fixture(scope="module")
def population():
    """6,000 stays under the clinicians (the cohort's own logging), with per-stay arrays."""
    cols, _ = synthesize(6000, seed=3, progress=False)
    ep = cols["episode_id"]
    u, inv = np.unique(ep, return_inverse=True)
    died = np.zeros(len(u), dtype=bool)
    died[inv] = cols["outcome"].astype(bool)
    return cols, inv, died


def test_keyed_noise_depends_only_on_stay_and_step():
    a = KeyedNoise(5, np.array([1, 2, 3]), 4)
    b = KeyedNoise(5, np.array([3, 1]), 4)
    x, y = a.normal(size=3), b.normal(size=2)
    np.testing.assert_array_equal(x[[2, 0]], y)  # batch composition and order do not matter
    assert not np.array_equal(KeyedNoise(5, np.array([1]), 5).normal(size=1), x[:1])  # the step does


def test_clinician_replayed_with_the_cohort_seed_reproduces_the_logged_stays(tmp_path):
    out = synthesize_cohort(tmp_path / "c", 120, seed=6, progress=False)
    truth = GroundTruth.load(out)
    logged = LoggedData.from_cohort(out, "test")
    ids = np.unique(logged.episode_ids)
    traj = play(truth.simulator, SyntheticClinician(NAMES, 6), truth.patients(ids), ids, seed=6)
    np.testing.assert_array_equal(traj.row_rollout, logged.episode_ids)
    np.testing.assert_array_equal(traj.row_action, logged.actions)
    np.testing.assert_allclose(traj.row_state, logged.states, rtol=1e-6)
    np.testing.assert_allclose(traj.row_prob, logged.behaviour_prob, rtol=1e-12)
    np.testing.assert_allclose(np.sort(traj.undiscounted), np.sort(logged.returns()), atol=1e-9)


class _Recorder(Policy):
    """Acts like another policy and records the stay ids and histories it is shown."""

    name = "recorder"

    def __init__(self, inner: Policy):
        self.inner, self.seen, self.begun = inner, [], []

    def begin(self, episode_ids: np.ndarray) -> None:
        self.begun.append(episode_ids.copy())

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        self.seen.append(batch)
        return self.inner.action_probs(batch)


def test_policies_meet_the_same_draws_and_know_the_stay(tmp_path):
    out = synthesize_cohort(tmp_path / "c", 200, seed=2, progress=False)
    rec = _Recorder(SyntheticClinician(NAMES, 2))
    runs = true_policy_values(out, {"a": SyntheticClinician(NAMES, 2), "b": rec, "none": no_treatment()}, repeats=2)
    a, b = runs["a"], runs["b"]
    # the same policy twice: identical rollouts (no shared generator is consumed differently)
    np.testing.assert_array_equal(a.returns, b.returns)
    np.testing.assert_array_equal(a.row_action, b.row_action)
    # the admission chart is the same for every policy (same patients, same charting draws)
    first = lambda t: t.row_state[t.row_step == 0]  # noqa: E731
    np.testing.assert_array_equal(first(a), first(runs["none"]))
    # stays keep their identity while others end; histories grow up to the window
    assert set(rec.begun[0].tolist()) == set(a.rollout_ids.tolist())
    late = rec.seen[3]
    assert late.lengths.max() == 4 and set(late.episode_ids.tolist()) <= set(a.rollout_ids.tolist())
    summary = true_summary(runs["none"], a)
    assert summary["n_patients"] == len(np.unique(read_split(out, "test").column("episode_id").to_numpy()))
    assert summary["diff_survival_ci"][0] <= summary["diff_survival_vs_clinician"] <= summary["diff_survival_ci"][1]


def test_no_constant_regimen_reaches_the_clinicians_and_no_treatment_is_worse_than_moderate_care():
    start = SIM.sample_patients(2500, np.random.default_rng(11))
    ids = np.arange(2500)
    clin = play(SIM, SyntheticClinician(NAMES, 11), start, ids, seed=12)
    none = play(SIM, no_treatment(), start, ids, seed=12)
    surv = {a: play(SIM, ConstantPolicy(a), start, ids, seed=12).survived.mean() for a in range(25)}
    best = max(surv.values())
    assert best < clin.survived.mean() - 0.015, (best, clin.survived.mean())
    # more fluid is not free: the largest fluid bin for the whole stay is far below the clinicians
    assert surv[20] < clin.survived.mean() - 0.10
    # no treatment is worse than every moderate regimen (fluid and vasopressor bins <= 3); only sustained
    # maximal fluid with vasopressors or maximal vasopressor doses for the whole stay (~30 L or 0.7
    # mcg/kg/min for 80 h) are worse still, as they would be in reality
    moderate = [surv[a] for a in range(1, 25) if a // 5 <= 3 and a % 5 <= 3]
    assert none.survived.mean() < min(moderate)
    assert none.survived.mean() < play(SIM, RandomPolicy(), start, ids, seed=12).survived.mean()


def test_mortality_rises_across_berlin_pf_bands_among_ventilated(population):
    cols, inv, died = population
    vent, pf = cols["mechvent"] > 0.5, cols["PaO2_FiO2"]
    rows = np.flatnonzero(vent & (cols["step"] <= 5))[::-1]
    first_pf = np.full(len(died), np.nan)
    first_pf[inv[rows]] = pf[rows]  # P/F at the first ventilated step of the first 24 h
    band = lambda lo, hi: died[(first_pf > lo) & (first_pf <= hi)].mean()  # noqa: E731
    no_ards, mild, moderate = band(300, 1e9), band(200, 300), band(100, 200)
    assert no_ards < mild < moderate
    assert 0.20 <= mild <= 0.40  # Berlin: 27% (95% CI 24-30)
    assert 0.30 <= moderate <= 0.70  # Berlin: 32% (29-34); steeper here (see the simulator docstring)


class _Overload(Policy):
    """The clinician, but with the largest fluid bin at the first six decisions (+9 L in 24 h)."""

    name = "overload"

    def __init__(self, clinician: Policy):
        self.clinician = clinician

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        p = self.clinician.action_probs(batch).reshape(-1, 5, 5)
        early = batch.steps < 6
        vaso = p.sum(axis=1)  # the clinician's vasopressor choice, fluid bin forced to 4
        forced = np.zeros_like(p)
        forced[:, 4, :] = vaso
        return np.where(early[:, None, None], forced, p).reshape(-1, 25)


def test_fluid_overload_raises_mortality(population):
    cols, inv, died = population
    # observational, landmark at 24 h among stays still in the ICU (clinicians rarely pass +5 L here)
    at = cols["step"] == 6
    over = cols["cumulated_balance"][at] > 4000
    later = died[inv[at]]
    assert over.sum() >= 50 and later[over].mean() > later[~over].mean() + 0.05
    # interventional, paired: the same clinicians pushed past +5 L in the first 24 h lose patients
    start = SIM.sample_patients(2000, np.random.default_rng(5))
    ids = np.arange(2000)
    clin = SyntheticClinician(NAMES, 5)
    base = play(SIM, clin, start, ids, seed=9)
    pushed = play(SIM, _Overload(clin), start, ids, seed=9)
    bal = pushed.row_state[pushed.row_step == 5][:, NAMES.index("cumulated_balance")]
    assert np.median(bal) > 5000
    assert pushed.survived.mean() < base.survived.mean() - 0.05


def test_persistent_hypotension_and_non_clearing_lactate_raise_mortality(population):
    cols, inv, died = population
    ep, hyp = cols["episode_id"], cols["MeanBP"] < 65
    run2 = hyp & np.r_[False, hyp[:-1]] & np.r_[False, ep[1:] == ep[:-1]]
    persistent = np.zeros(len(died), dtype=bool)
    persistent[inv[run2]] = True
    assert died[persistent].mean() > died[~persistent].mean() + 0.15
    lac, step = cols["Arterial_lactate"], cols["step"]
    l0, l2 = np.full(len(died), np.nan), np.full(len(died), np.nan)
    l0[inv[step == 0]], l2[inv[step == 2]] = lac[step == 0], lac[step == 2]
    high = (l0 > 2) & np.isfinite(l2)
    cleared = l2 <= 0.9 * l0  # >= 10% clearance (Nguyen 2004)
    assert died[high & ~cleared].mean() > died[high & cleared].mean() + 0.1


def test_high_vasopressor_doses_carry_high_mortality(population):
    cols, inv, died = population
    top = np.zeros(len(died))
    np.maximum.at(top, inv, cols["vaso_dose"])
    assert died[top >= 0.45].mean() > died[(top > 0) & (top < 0.2)].mean()


def test_cli_sanity_json(tmp_path, capsys):
    out = synthesize_cohort(tmp_path / "c", 100, seed=1, progress=False)
    assert main(["cohort", "sanity", str(out), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["policies"]
    assert {"clinician", "random", "no_treatment", "const_F4V0"} <= set(table)
    assert len([k for k in table if k.startswith("const_F")]) == 25
    for row in table.values():
        assert row["survival_ci"][0] <= row["survival"] <= row["survival_ci"][1]
    assert main(["cohort", "sanity", str(tmp_path / "missing")]) == 2
