"""Cohort format: round trip, metadata, atomic writes, and the synth/describe CLI."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from sepsis_rl.cli import main
from sepsis_rl.cohort.spec import CohortSpec
from sepsis_rl.cohort.store import SPLITS, read_cohort, spec_of_file, write_cohort
from sepsis_rl.cohort.synth import GroundTruth, synthesize_cohort, true_policy_values
from sepsis_rl.eval.policies import no_treatment


def test_round_trip_and_metadata(tmp_path):
    out = synthesize_cohort(tmp_path / "c", 200, seed=3, progress=False)
    cohort = read_cohort(out)
    assert set(cohort.splits) == set(SPLITS)
    # spec in cohort.json equals the one in each file's schema metadata
    on_disk = CohortSpec.from_json((out / "cohort.json").read_text())
    for split in SPLITS:
        assert spec_of_file(out / f"{split}.parquet") == on_disk == cohort.spec
    # write the tables again and read back identical data
    again = write_cohort(tmp_path / "again", cohort.splits, cohort.spec)
    back = read_cohort(again)
    for split in SPLITS:
        assert back.table(split).equals(cohort.table(split))
    assert cohort.features("train").shape[1] == len(cohort.spec.features) >= 40
    total = sum(t.num_rows for t in cohort.splits.values())
    assert total == sum(pq.read_metadata(out / f"{s}.parquet").num_rows for s in SPLITS)


def test_refuses_to_overwrite_and_failed_write_leaves_nothing(tmp_path):
    out = synthesize_cohort(tmp_path / "c", 50, seed=1, progress=False)
    with pytest.raises(FileExistsError):
        synthesize_cohort(out, 50, seed=2, progress=False)
    cohort = read_cohort(out)

    def boom(tmp):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_cohort(tmp_path / "partial", cohort.splits, cohort.spec, extra_writers=[boom])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    # overwrite swaps atomically and keeps a readable cohort
    synthesize_cohort(out, 60, seed=2, overwrite=True, progress=False)
    assert sum(len(set(t.column("episode_id").to_pylist())) for t in read_cohort(out).splits.values()) == 60


def test_ground_truth_replays_the_same_patients(tmp_path):
    out = synthesize_cohort(tmp_path / "c", 300, seed=4, progress=False)
    truth = GroundTruth.load(out)
    ids = np.array([3, 7, 42])
    batch = truth.patients(ids)
    np.testing.assert_array_equal(batch.p["age"], truth.admission.p["age"][ids])
    never = true_policy_values(out, {"none": no_treatment()}, repeats=3)["none"]
    assert len(never.returns) == 3 * len(read_cohort(out).table("test").column("episode_id").unique())


def test_cli_synth_and_describe(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert main(["cohort", "synth", "--patients", "150", "--seed", "9", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["cohort", "describe", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 150 and summary["n_features"] == 47
    fractions = np.array(summary["action_distribution"]["fraction"])
    assert fractions.shape == (5, 5) and fractions.sum() == pytest.approx(1.0, abs=1e-3)
    assert 0 <= summary["mortality"] <= 1
    assert main(["cohort", "describe", str(out)]) == 0
    assert "action distribution" in capsys.readouterr().out


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["cohort", "describe", str(tmp_path)]) == 2
    assert "not a cohort folder" in capsys.readouterr().err
    assert main(["cohort", "synth", "--patients", "0", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
