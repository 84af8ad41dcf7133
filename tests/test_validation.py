"""Validation at the edges: plausible ranges, whole bins, role columns, cohort size, first bad row, config ranges."""

import json

import numpy as np
import pandas as pd
import pytest

from sepsis_rl.cohort.features import AI_CLINICIAN_FEATURES, PLAUSIBLE_RANGES
from sepsis_rl.cohort.spec import CohortSpec
from sepsis_rl.cohort.store import read_cohort, read_spec
from sepsis_rl.cohort.synth import synthesize
from sepsis_rl.curriculum.config import ConfigError, load_config
from test_importers import GENERIC_SPEC, _expect_rejected, ai_clinician_frame, generic_frame, run_cli, write_generic


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    cols, _ = synthesize(60, seed=5, progress=False)
    return pd.DataFrame(cols)


def _import_ai(tmp_path, df, *extra):
    src = tmp_path / "mimic.csv"
    df.to_csv(src, index=False)
    return src, run_cli("import", "--format", "ai-clinician", "--input", str(src), "--out", str(tmp_path / "c"), *extra)


def test_every_continuous_ai_clinician_feature_has_a_range_with_a_reason():
    for f in AI_CLINICIAN_FEATURES:
        if f.kind == "continuous":
            lo, hi, why = PLAUSIBLE_RANGES[f.name]
            assert (f.plausible_low, f.plausible_high) == (lo, hi) and lo < hi and why
            # a range holds the normal range: it is about possible values, not healthy ones
            assert lo <= (f.normal_low if f.normal_low is not None else lo)
            assert (f.normal_high if f.normal_high is not None else hi) <= hi


def test_the_synthetic_cohort_is_within_the_default_ranges():
    cols, _ = synthesize(400, seed=2, progress=False)
    for f in AI_CLINICIAN_FEATURES:
        lo, hi = f.plausible_range
        v = np.asarray(cols[f.name])
        assert lo <= v.min() and v.max() <= hi, (f.name, v.min(), v.max(), lo, hi)


@pytest.mark.parametrize("column,value,shown", [
    ("MeanBP", 1e9, "value 1e+09 mmHg is outside the plausible range [0, 300]"),
    ("age", -5 * 365.25, "value -5 years is outside the plausible range [0, 125]"),
    ("Temp_C", -300, "value -300 degC is outside the plausible range [10, 47]"),
    ("SpO2", 250, "value 250 % is outside the plausible range [0, 100]"),
    ("Arterial_pH", 70, "value 70 pH is outside the plausible range [6, 8]"),
    ("SOFA", -10, "value -10 points is outside the plausible range [0, 24]"),
])
def test_implausible_values_are_rejected_naming_file_column_row_and_range(tmp_path, capsys, rows, column, value, shown):
    df = ai_clinician_frame(rows).reset_index(drop=True)
    df.loc[6, column] = value
    src, code = _import_ai(tmp_path, df)
    err = capsys.readouterr().err.strip()
    assert code == 2 and not (tmp_path / "c").exists()
    assert "\n" not in err and f"{src}: column {column!r}, row 7 (line 8): {shown}" in err, err


def test_clip_implausible_clips_and_counts(tmp_path, capsys, rows):
    df = ai_clinician_frame(rows).reset_index(drop=True)
    df.loc[[3, 9], "MeanBP"] = 1e9
    df.loc[4, "SpO2"] = 250
    src, code = _import_ai(tmp_path, df, "--clip-implausible")
    assert code == 0
    assert "clipped 3 implausible value(s)" in capsys.readouterr().out
    cohort = read_cohort(tmp_path / "c")
    table = pd.concat([t.to_pandas() for t in cohort.splits.values()])
    assert table.MeanBP.max() == 300 and table.SpO2.max() == 100
    assert cohort.spec.extra["clipped_implausible"] == {"MeanBP": 2, "SpO2": 1}


def test_fractional_bin_is_rejected_not_truncated(tmp_path, capsys):
    df = generic_frame()
    df["fluid_bin"] = df["fluid_bin"].astype(float)
    df.loc[5, "fluid_bin"] = 2.5
    _expect_rejected(tmp_path, capsys, df, ["column 'fluid_bin'", "row 6 (line 7)", "action bin 2.5 is not a whole bin"])


@pytest.mark.parametrize("column,role", [("died", "outcome"), ("stay", "episode"), ("t", "step"), ("vaso_bin", "vasopressor action")])
def test_role_columns_are_refused_as_state_features(tmp_path, capsys, column, role):
    spec = json.loads(json.dumps(GENERIC_SPEC))
    spec["features"].append({"column": column, "unit": "-", "kind": "continuous", "static": False})
    data, spec_path = write_generic(tmp_path, generic_frame(), spec)
    code = run_cli("import", "--format", "generic", "--input", str(data), "--spec", str(spec_path), "--out", str(tmp_path / "c"))
    err = capsys.readouterr().err
    assert code == 2 and f"feature {column!r} is the {role} column and cannot be a state feature" in err
    assert str(spec_path) in err and not (tmp_path / "c").exists()


def test_generic_range_overrides_and_old_specs_still_load(tmp_path, capsys):
    spec = json.loads(json.dumps(GENERIC_SPEC))
    spec["features"][0]["range"] = [20, 60]  # map: every value of generic_frame (mean 70) is not in it
    _expect_rejected(tmp_path, capsys, generic_frame(), ["column 'map'", "outside the plausible range [20, 60]"], spec)
    spec["features"][0]["range"] = [0, None]  # open-ended above
    data, spec_path = write_generic(tmp_path, generic_frame(), spec)
    assert run_cli("import", "--format", "generic", "--input", str(data), "--spec", str(spec_path), "--out", str(tmp_path / "ok")) == 0
    f = read_spec(tmp_path / "ok").feature("map")
    assert (f.plausible_low, f.plausible_high) == (0, None)
    # a cohort.json written before ranges existed: no range keys, loads with no range
    old = json.loads((tmp_path / "ok" / "cohort.json").read_text())
    for feat in old["features"]:
        del feat["plausible_low"], feat["plausible_high"]
    assert CohortSpec.from_dict(old).feature("map").plausible_range == (float("-inf"), float("inf"))
    spec["features"][0]["range"] = [5, 1]
    data, spec_path = write_generic(tmp_path, generic_frame(), spec)
    assert run_cli("import", "--format", "generic", "--input", str(data), "--spec", str(spec_path), "--out", str(tmp_path / "x")) == 2
    assert "features[0].range [5, 1] is empty" in capsys.readouterr().err


def test_too_small_a_cohort_is_refused_at_import(tmp_path, capsys):
    df = generic_frame()
    two = df[df.stay.isin(df.stay.unique()[:2])]
    _expect_rejected(tmp_path, capsys, two, ["2 patient(s) cannot give every split", "need at least 3 patients"])


def test_first_bad_row_of_an_out_of_order_negative_step(tmp_path, capsys, rows):
    df = ai_clinician_frame(rows).sort_values(["icustayid", "bloc"]).reset_index(drop=True)
    df.loc[1, "bloc"] = -1  # the first stay reads 1, -1, 3, ...: line 3 is the bad one, not line 2
    src, code = _import_ai(tmp_path, df)
    err = capsys.readouterr().err
    assert code == 2 and f"{src}: column 'bloc', row 2 (line 3): steps of episode" in err, err


@pytest.mark.parametrize("key,value,message", [
    ("rl.iterations", -1, "rl.iterations must be >= 1, got -1"),
    ("rl.gamma", 1.5, "rl.gamma must be in [0, 1], got 1.5"),
    ("rl.clip_eps", 0.0, "rl.clip_eps must be in (0, 1], got 0.0"),
    ("rollout.workers", 0, "rollout.workers must be >= 1, got 0"),
    ("sft.lr", -1e-3, "sft.lr must be > 0"),
    ("cluster.zero_stage", 4, "cluster.zero_stage must be one of 0, 1, 2, 3"),
    ("cohort.patients", 2, "cohort.patients must be >= 3"),
])
def test_config_values_are_range_checked_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=None) as e:
        load_config("tiny", {key: value})
    assert message in str(e.value) and f"--set {key}={value}" in str(e.value)


def test_world_model_training_config_names_the_key():
    from world_model.presets import get_preset

    with pytest.raises(ConfigError, match="train.batch_size must be >= 1, got 0"):
        get_preset("tiny", batch_size=0)
    with pytest.raises(ConfigError, match="train.lr must be > 0"):
        get_preset("tiny", lr=float("nan"))
    with pytest.raises(ConfigError, match="unexpected keyword"):
        get_preset("tiny", nonsense=1)
