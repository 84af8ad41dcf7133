"""Both importers on fixture files written here, and every validation error (exit 2, nothing written)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sepsis_rl.cli import main
from sepsis_rl.cohort.features import AI_CLINICIAN_FEATURE_NAMES
from sepsis_rl.cohort.store import read_cohort
from sepsis_rl.cohort.synth import synthesize


@pytest.fixture(scope="module")
def synthetic_rows() -> pd.DataFrame:
    cols, _ = synthesize(120, seed=11, progress=False)
    return pd.DataFrame(cols)


def ai_clinician_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The synthetic rows laid out as an AI Clinician extract (1-based blocs, doses, extra columns)."""
    df = rows[list(AI_CLINICIAN_FEATURE_NAMES)].copy()
    df.insert(0, "bloc", rows["step"] + 1)
    df.insert(1, "icustayid", rows["episode_id"] + 200000)
    df.insert(2, "charttime", 7245000000 + rows["step"] * 14400)
    df["age"] = df["age"] * 365.25  # MIMIC-III extract: age in days
    df["input_4hourly"] = rows["fluid_ml"]
    df["max_dose_vaso"] = rows["vaso_dose"]
    df["median_dose_vaso"] = rows["vaso_dose"] * 0.8
    df["Ionised_Ca"] = 1.1
    df["mortality_90d"] = rows["outcome"]
    return df.sample(frac=1.0, random_state=0)  # row order of a real file is not guaranteed


def run_cli(*args: str) -> int:
    return main(["cohort", *args])


def test_ai_clinician_import(tmp_path, synthetic_rows):
    src = tmp_path / "mimic_table.csv"
    ai_clinician_frame(synthetic_rows).to_csv(src, index=False)
    assert run_cli("import", "--format", "ai-clinician", "--input", str(src), "--out", str(tmp_path / "c")) == 0
    cohort = read_cohort(tmp_path / "c")
    table = pd.concat([t.to_pandas() for t in cohort.splits.values()])
    assert len(table) == len(synthetic_rows)
    assert cohort.spec.source == "ai-clinician" and len(cohort.spec.features) == 47
    assert table["age"].between(18, 95).all()  # days converted to years
    assert table.groupby("episode_id")["step"].min().eq(0).all()
    # bins are training-split quartiles of non-zero doses: each non-zero bin holds roughly a quarter
    train = cohort.table("train").to_pandas()
    nonzero = train[train.fluid_ml > 0]
    shares = nonzero.action_fluid.value_counts(normalize=True).sort_index()
    assert list(shares.index) == [1, 2, 3, 4] and shares.between(0.2, 0.3).all()
    assert (train.loc[train.vaso_dose == 0, "action_vaso"] == 0).all()
    edges = cohort.spec.vaso.edges
    assert edges[0] < edges[1] < edges[2]
    # patient-level split: no episode in two splits
    ids = [set(t.column("episode_id").to_pylist()) for t in cohort.splits.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    # reward: terminal +-15 on the last row of each stay
    last = table.sort_values(["episode_id", "step"]).groupby("episode_id").tail(1)
    assert np.allclose(last.reward, np.where(last.outcome == 1, -15.0, 15.0))


GENERIC_SPEC = {
    "episode_column": "stay",
    "step_column": "t",
    "features": [
        {"column": "map", "unit": "mmHg", "kind": "continuous", "static": False},
        {"column": "lactate", "unit": "mmol/L", "kind": "continuous", "static": False},
        {"column": "SOFA", "unit": "points", "kind": "continuous", "static": False},
        {"column": "ventilated", "unit": "0/1", "kind": "binary", "static": False},
        {"column": "age_years", "unit": "years", "kind": "continuous", "static": True},
    ],
    "action": {"fluid_bin_column": "fluid_bin", "vaso_bin_column": "vaso_bin"},
    "outcome_column": "died",
}


def generic_frame(n_stays: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_stays):
        died = int(rng.random() < 0.3)
        for t in range(int(rng.integers(2, 7))):
            rows.append({
                "stay": f"stay-{s:03d}", "t": t + 10, "map": rng.normal(70, 8), "lactate": rng.uniform(0.8, 6),
                "SOFA": int(rng.integers(0, 15)), "ventilated": int(rng.random() < 0.2), "age_years": 60 + s,
                "fluid_bin": int(rng.integers(0, 5)), "vaso_bin": int(rng.integers(0, 5)), "died": died,
            })
    return pd.DataFrame(rows)


def write_generic(tmp_path: Path, df: pd.DataFrame, spec: dict = GENERIC_SPEC, suffix: str = ".csv") -> tuple[Path, Path]:
    data = tmp_path / f"extract{suffix}"
    if suffix == ".csv":
        df.to_csv(data, index=False)
    else:
        df.to_parquet(data, index=False)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    return data, spec_path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_generic_import_with_bins(tmp_path, suffix):
    df = generic_frame()
    data, spec = write_generic(tmp_path, df, suffix=suffix)
    out = tmp_path / "c"
    assert run_cli("import", "--format", "generic", "--input", str(data), "--spec", str(spec), "--out", str(out)) == 0
    cohort = read_cohort(out)
    assert cohort.spec.feature_names == ["map", "lactate", "SOFA", "ventilated", "age_years"]
    assert cohort.spec.feature("age_years").static and cohort.spec.feature("ventilated").kind == "binary"
    table = pd.concat([t.to_pandas() for t in cohort.splits.values()]).sort_values(["episode_id", "step"])
    assert len(table) == len(df)
    assert set(table.source_episode_id) == set(df.stay)
    merged = table.merge(df, left_on=["source_episode_id", "map"], right_on=["stay", "map"])
    assert (merged.action_fluid == merged.fluid_bin).all() and (merged.action_vaso == merged.vaso_bin).all()


def test_generic_import_with_doses_and_reward_column(tmp_path):
    df = generic_frame()
    rng = np.random.default_rng(1)
    df["fluid_ml"] = np.where(rng.random(len(df)) < 0.3, 0.0, rng.uniform(10, 2000, len(df)))
    df["norepi"] = np.where(rng.random(len(df)) < 0.5, 0.0, rng.uniform(0.01, 1, len(df)))
    df["r"] = 1.5
    spec = dict(GENERIC_SPEC, action={"fluid_dose_column": "fluid_ml", "vaso_dose_column": "norepi"}, reward_column="r")
    data, spec_path = write_generic(tmp_path, df, spec)
    assert run_cli("import", "--format", "generic", "--input", str(data), "--spec", str(spec_path), "--out", str(tmp_path / "c")) == 0
    cohort = read_cohort(tmp_path / "c")
    table = pd.concat([t.to_pandas() for t in cohort.splits.values()])
    assert (table.reward == 1.5).all()
    assert ((table.fluid_ml == 0) == (table.action_fluid == 0)).all()
    assert table.action_fluid.max() == 4


def _expect_rejected(tmp_path, capsys, df, expected: list[str], spec=GENERIC_SPEC):
    data, spec_path = write_generic(tmp_path, df, spec)
    out = tmp_path / "never"
    code = run_cli("import", "--format", "generic", "--input", str(data), "--spec", str(spec_path), "--out", str(out))
    err = capsys.readouterr().err
    assert code == 2
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]
    line = err.strip()
    assert "\n" not in line, line
    for piece in [str(data), *expected]:
        assert piece in line, (piece, line)


def test_rejects_missing_column(tmp_path, capsys):
    _expect_rejected(tmp_path, capsys, generic_frame().drop(columns=["lactate"]), ["column 'lactate'", "missing column"])


def test_rejects_non_numeric_value(tmp_path, capsys):
    df = generic_frame()
    df["map"] = df["map"].astype(object)
    df.loc[7, "map"] = "high"
    _expect_rejected(tmp_path, capsys, df, ["column 'map'", "row 8 (line 9)", "non-numeric value 'high'"])


def test_rejects_missing_required_value(tmp_path, capsys):
    df = generic_frame()
    df.loc[4, "SOFA"] = np.nan
    _expect_rejected(tmp_path, capsys, df, ["column 'SOFA'", "row 5 (line 6)", "required value is missing"])


def test_rejects_duplicate_episode_step(tmp_path, capsys):
    df = generic_frame()
    df = pd.concat([df.iloc[:3], df.iloc[[1]], df.iloc[3:]], ignore_index=True)
    _expect_rejected(tmp_path, capsys, df, ["column 't'", "row 4 (line 5)", "duplicate (episode, step)"])


def test_rejects_non_contiguous_steps(tmp_path, capsys):
    df = generic_frame()
    df = df.drop(index=1).reset_index(drop=True)  # stay-000 steps 10, 12, ...
    _expect_rejected(tmp_path, capsys, df, ["column 't'", "row 2 (line 3)", "not contiguous"])


def test_rejects_bins_outside_range(tmp_path, capsys):
    df = generic_frame()
    df.loc[9, "vaso_bin"] = 5
    _expect_rejected(tmp_path, capsys, df, ["column 'vaso_bin'", "row 10 (line 11)", "outside 0..4"])


def test_rejects_outcome_changing_within_episode(tmp_path, capsys):
    df = generic_frame()
    df.loc[1, "died"] = 1 - df.loc[0, "died"]
    _expect_rejected(tmp_path, capsys, df, ["column 'died'", "row 2 (line 3)", "outcome changes"])


def test_rejects_bad_spec(tmp_path, capsys):
    spec = dict(GENERIC_SPEC, extra_key=1)
    data, spec_path = write_generic(tmp_path, generic_frame(), spec)
    assert run_cli("import", "--format", "generic", "--input", str(data), "--spec", str(spec_path), "--out", str(tmp_path / "c")) == 2
    assert "unknown key 'extra_key'" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_rejects_ai_clinician_file_missing_column(tmp_path, capsys, synthetic_rows):
    src = tmp_path / "mimic.csv"
    ai_clinician_frame(synthetic_rows).drop(columns=["Arterial_lactate"]).to_csv(src, index=False)
    assert run_cli("import", "--format", "ai-clinician", "--input", str(src), "--out", str(tmp_path / "c")) == 2
    err = capsys.readouterr().err
    assert str(src) in err and "'Arterial_lactate'" in err and not (tmp_path / "c").exists()
