"""Ground-truth simulator: determinism, plausible ranges, effect directions, behaviour propensities."""

import numpy as np
import pytest

from sepsis_rl.cohort.behaviour import ClinicianPolicy
from sepsis_rl.cohort.features import AI_CLINICIAN_FEATURE_NAMES as NAMES
from sepsis_rl.cohort.simulator import SepsisSimulator
from sepsis_rl.cohort.synth import synthesize
from sepsis_rl.cohort.truth import play
from sepsis_rl.eval.policies import SyntheticClinician, no_treatment

N = 4000
SIM = SepsisSimulator()


def col(obs: np.ndarray, name: str) -> np.ndarray:
    return obs[:, NAMES.index(name)]


@pytest.fixture(scope="module")
def patients():
    return SIM.sample_patients(N, np.random.default_rng(1))


def paired_step(patients, fluid, vaso, seed=2):
    """Same patients, same random stream, different doses: isolates the treatment effect."""
    out = SIM.step(patients, np.full(N, fluid), np.full(N, vaso), np.random.default_rng(seed))
    return out, SIM.observe(out.batch, np.random.default_rng(seed + 1))


def test_at_least_40_features_in_real_units():
    assert len(NAMES) >= 40
    obs = SIM.observe(SIM.sample_patients(50, np.random.default_rng(0)), np.random.default_rng(0))
    assert obs.shape == (50, len(NAMES)) and np.isfinite(obs).all()


def test_determinism_by_seed():
    a, _ = synthesize(200, seed=5, progress=False)
    b, _ = synthesize(200, seed=5, progress=False)
    c, _ = synthesize(200, seed=6, progress=False)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["MeanBP"][:50], c["MeanBP"][:50])


def test_plausible_value_ranges():
    cols, _ = synthesize(1500, seed=3, progress=False)
    ranges = {
        "MeanBP": (20, 140), "HR": (30, 200), "Arterial_lactate": (0.3, 30), "SOFA": (0, 24), "GCS": (3, 15),
        "SpO2": (50, 100), "Temp_C": (32, 42), "Arterial_pH": (6.8, 7.7), "PaO2_FiO2": (30, 650),
        "Platelets_count": (1, 800), "Creatinine": (0.2, 15), "FiO2_1": (0.21, 1.0), "age": (18, 95),
    }
    for name, (lo, hi) in ranges.items():
        assert cols[name].min() >= lo and cols[name].max() <= hi, name
    # a septic ICU population: mostly abnormal, not absurd
    assert 60 < np.median(cols["MeanBP"]) < 90
    assert 1.2 < np.median(cols["Arterial_lactate"]) < 5
    assert set(np.unique(cols["mechvent"])) <= {0.0, 1.0}
    ep = cols["episode_id"]
    assert np.bincount(np.bincount(ep)).nonzero()[0].max() <= 20  # at most 20 steps per stay


def test_vasopressors_raise_map_in_hypotensive_patients(patients):
    hypo = SIM.mean_arterial_pressure(patients) < 65
    assert hypo.sum() > 200
    _, none = paired_step(patients, 0.0, 0.0)
    _, vaso = paired_step(patients, 0.0, 0.325)
    gain = col(vaso, "MeanBP")[hypo] - col(none, "MeanBP")[hypo]
    assert gain.mean() > 8.0  # documented: ~+15 mmHg at 0.325 in a non-vasoplegic patient


def test_fluids_help_responders_more_than_non_responders(patients):
    responder = patients.p["resp_gain"] > 10
    hypovolaemic = patients.x["vol"] < -1.0
    _, none = paired_step(patients, 0.0, 0.0)
    _, fluid = paired_step(patients, 1500.0, 0.0)
    gain = col(fluid, "MeanBP") - col(none, "MeanBP")
    assert gain[responder & hypovolaemic].mean() > 3 * gain[~responder & hypovolaemic].mean()
    lactate_change = col(fluid, "Arterial_lactate") - col(none, "Arterial_lactate")
    assert lactate_change[responder & hypovolaemic].mean() < 0


def test_fluid_overload_lowers_pf_ratio(patients):
    batch = patients.copy()
    rng = np.random.default_rng(4)
    heavy = batch
    light = batch.copy()
    for _ in range(4):  # 4 steps of 2 L vs none
        heavy = SIM.step(heavy, np.full(N, 2000.0), np.zeros(N), np.random.default_rng(rng.integers(1 << 30))).batch
        light = SIM.step(light, np.zeros(N), np.zeros(N), np.random.default_rng(rng.integers(1 << 30))).batch
    assert SIM.pf_ratio(heavy).mean() < 0.85 * SIM.pf_ratio(light).mean()


def test_high_dose_vasopressors_raise_lactate(patients):
    _, low = paired_step(patients, 0.0, 0.3)
    _, high = paired_step(patients, 0.0, 1.0)
    assert (col(high, "Arterial_lactate") - col(low, "Arterial_lactate")).mean() > 0.3


def test_mortality_rises_with_sofa():
    cols, _ = synthesize(4000, seed=7, progress=False)
    first = cols["step"] == 0
    sofa0, died = cols["SOFA"][first], cols["outcome"][first]
    low, high = died[sofa0 <= 3].mean(), died[sofa0 >= 7].mean()
    assert high > low + 0.1


def test_behaviour_probabilities_sum_to_one_and_are_logged():
    policy = ClinicianPolicy(NAMES)
    rng = np.random.default_rng(0)
    batch = SIM.sample_patients(500, rng)
    obs = SIM.observe(batch, rng)
    probs = policy.probs(obs, np.zeros(500), np.zeros(500, dtype=int), policy.sample_styles(500, rng))
    assert probs.shape == (500, 25)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert probs.min() >= 0.04 / 25 - 1e-12  # exploration gives every action support
    cols, _ = synthesize(300, seed=1, progress=False)
    assert ((cols["behaviour_prob"] > 0) & (cols["behaviour_prob"] <= 1)).all()


def test_treatment_matters_for_true_value():
    """The clinician policy beats doing nothing in the ground truth: treatment changes outcomes."""
    start = SIM.sample_patients(3000, np.random.default_rng(0))
    ids = np.arange(3000)
    v_none = play(SIM, no_treatment(), start, ids, seed=1)
    v_clin = play(SIM, SyntheticClinician(NAMES, 0), start, ids, seed=1)
    assert v_clin.mortality < v_none.mortality - 0.05
    assert v_clin.returns.mean() > v_none.returns.mean()
