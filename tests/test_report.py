"""The report: markdown + PNGs from a small report dict; estimator coverage and error tables."""

import json

import numpy as np
import pytest

from sepsis_rl.eval.report import PLOTS, estimator_coverage, estimator_errors, write_report


def _est(value, lo, hi, ess=100.0):
    return {"value": value, "ci": [lo, hi], "ess": ess}


def _policy(true_return, ope, table_cell=0):
    table = np.zeros((5, 5))
    table[table_cell // 5, table_cell % 5] = 1.0
    return {
        "ope": ope,
        "true": {"return": true_return, "return_ci": [true_return - 0.5, true_return + 0.5], "survival": 0.8,
                 "survival_ci": [0.75, 0.85], "diff_return_vs_clinician": 0.0, "diff_return_ci": [-0.1, 0.1],
                 "diff_survival_vs_clinician": 0.0, "diff_survival_ci": [-0.01, 0.01], "n_patients": 200},
        "safety": {"g1": 0.9, "g2": 0.95, "underdosing": 0.1, "overdosing": 0.05},
        "n_decisions": 1000, "status": "ok", "error": None, "action_table": table.tolist(),
        "dose_by_state": {"map_bands": ["<55", "55-65", "65-75", "75-85", ">=85"],
                          "map": {"fluid": [2.0, 1.5, 1.0, None, 0.5], "vaso": [2.0, 1.0, 0.2, 0.0, 0.0],
                                  "n": [1, 2, 3, 0, 4]},
                          "lactate_bands": ["<2", "2-4", ">=4"],
                          "lactate": {"fluid": [0.5, 1.0, 2.0], "vaso": [0.1, 0.5, 1.5], "n": [5, 3, 2]}},
    }


REPORT = {
    "cohort": "/tmp/cohort", "split": "test", "gamma": 0.99, "n_episodes": 200,
    "policies": {
        # clinician: WIS covers 10, DR misses (hi 9.5); random: WIS misses (lo 8.2 > 8), DR covers
        "clinician": _policy(10.0, {"wis": _est(10.1, 9.0, 11.0), "dr": _est(9.0, 8.5, 9.5),
                                     "wm": _est(12.5, 12.0, 13.0)}, 6),
        "random": _policy(8.0, {"wis": _est(8.6, 8.2, 9.0), "dr": _est(7.5, 6.0, 9.0, 12.0)}, 12),
        "broken": {"ope": {}, "true": None, "safety": {}, "n_decisions": 0, "status": "failed",
                   "error": "ValueError: model file missing", "action_table": None, "dose_by_state": None},
    },
}


def test_coverage_and_errors_by_hand():
    cov = estimator_coverage(REPORT)
    assert cov["wis"] == {"covered": 1, "n": 2, "rate": 0.5}
    assert cov["dr"] == {"covered": 1, "n": 2, "rate": 0.5}
    err = estimator_errors(REPORT)
    assert err["wis"]["bias"] == pytest.approx((0.1 + 0.6) / 2)
    assert err["dr"]["mae"] == pytest.approx((1.0 + 0.5) / 2)
    assert err["dr"]["rmse"] == pytest.approx(np.sqrt((1.0 + 0.25) / 2))
    assert "is" not in cov  # no policy reports it


def test_write_report_md_and_pngs(tmp_path):
    written = write_report(REPORT, tmp_path / "eval")
    names = {p.name for p in written}
    assert names == {"report.json", "report.md", *PLOTS}
    for plot in PLOTS:
        data = (tmp_path / "eval" / plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "| clinician | 10.10 [9.00, 11.00] (100) |" in md  # WIS cell of the clinician row
    assert "| WIS | 1/2 |" in md
    assert "| 200 | 2.50 |" in md  # the clinician's world-model value 12.5 minus its true 10.0
    assert "**broken**: ValueError: model file missing" in md
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["gamma"] == 0.99
    assert not [p for p in (tmp_path / "eval").iterdir() if p.name.startswith(".report-")]


def test_failed_write_leaves_nothing(tmp_path):
    bad = {**REPORT, "gamma": float("nan")}  # not valid JSON: allow_nan=False refuses it
    with pytest.raises(ValueError):
        write_report(bad, tmp_path / "eval")
    assert list((tmp_path / "eval").iterdir()) == []


def test_plots_draw_an_estimate_outside_its_bootstrap_ci(tmp_path):
    """A percentile-bootstrap CI of WIS on a few stays can exclude the point value (seen in a tiny pipeline run):
    the report is still written, not lost to a plotting error."""
    report = {**REPORT, "policies": {"clinician": _policy(10.0, {"wis": _est(10.1, 10.4, 11.0), "dr": _est(9.0, 7.0, 8.5)})}}
    written = write_report(report, tmp_path / "eval")
    assert {p.name for p in written} == {"report.json", "report.md", *PLOTS}


def test_paired_differences_by_hand_on_shared_patients(tmp_path):
    from sepsis_rl.eval.run import paired_difference, paired_table, per_patient_truth

    # patient 3 played twice (repeats): its mean is kept; patient 9 only by after_bc: not paired
    agent = per_patient_truth({"patients": [1, 2, 3, 3], "returns": [10.0, 0.0, 4.0, 6.0], "survived": [1, 0, 1, 1]})
    assert agent == {"patients": [1, 2, 3], "returns": [10.0, 0.0, 5.0], "survived": [1.0, 0.0, 1.0]}
    after_bc = {"patients": [1, 2, 3, 9], "returns": [8.0, 0.0, 5.0, 1.0], "survived": [1.0, 0.0, 0.0, 1.0]}
    d = paired_difference(agent, after_bc)
    assert d["n_patients"] == 3
    assert d["diff_return"] == pytest.approx(2.0 / 3) and d["diff_survival"] == pytest.approx(1.0 / 3)
    rows = paired_table({"agent": {"truth_arrays": agent}, "after_bc": {"truth_arrays": after_bc},
                         "guideline": {"truth_arrays": None}})
    assert [(r["policy"], r["vs"]) for r in rows] == [("agent", "after_bc")]  # pairs without truth are skipped
    md = write_report({**REPORT, "paired": rows}, tmp_path / "eval", write_json=False)
    text = next(p for p in md if p.name == "report.md").read_text()
    assert "| agent | after_bc | 0.67" in text
