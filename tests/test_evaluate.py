"""``sepsis-rl evaluate``: the whole stack on a small synthetic cohort, and its one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from sepsis_rl.cli import main
from sepsis_rl.cohort.synth import synthesize_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return synthesize_cohort(tmp_path_factory.mktemp("eval") / "c", 240, seed=5, progress=False)


@pytest.mark.slow
def test_evaluate_cohort_reports_truth_estimates_and_safety(cohort, tmp_path, capsys, monkeypatch):
    import sepsis_rl.eval.run as run_mod

    out, partials = tmp_path / "report", []
    real_partial = run_mod.write_partial

    def spy(report, path):  # each finished policy is on disk before the next one finishes
        real_partial(report, path)
        partials.append(sorted(json.loads(open(path).read())["policies"]))

    monkeypatch.setattr(run_mod, "write_partial", spy)
    rc = main(["evaluate", "--cohort", str(cohort), "--policies", "clinician,random,no_treatment,guideline",
               "--bootstrap", "30", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").exists() and list(out.glob("*.png"))
    assert [len(p) for p in partials] == [1, 2, 3] and set(partials[-1]) < set(report["policies"])
    assert not (tmp_path / "report.partial.json").exists()  # the whole report replaced it
    pol = report["policies"]
    assert set(pol) == {"clinician", "random", "no_treatment", "guideline"}
    clin = pol["clinician"]
    # on-policy identity through the whole stack: exact propensities make WIS and WPDIS the logged mean return
    # (to float32 precision: the cohort stores charts as float32, the logged propensities came from float64)
    logged = report["logged_clinician"]
    assert clin["ope"]["wis"]["value"] == pytest.approx(logged["return"], rel=1e-6)
    assert clin["ope"]["wpdis"]["value"] == pytest.approx(logged["return"], rel=1e-6)
    for name, p in pol.items():
        assert p["status"] == "ok", p["error"]
        t = p["true"]
        assert t["return_ci"][0] <= t["return"] <= t["return_ci"][1] and 0 <= t["survival"] <= 1
        assert {"is", "wis", "pdis", "wpdis", "dr", "fqe"} <= set(p["ope"])
        assert set(p["safety"]) >= {"g1", "g2", "underdosing", "overdosing"}
    assert pol["clinician"]["true"]["diff_return_vs_clinician"] == 0.0
    assert pol["no_treatment"]["true"]["survival"] < pol["clinician"]["true"]["survival"]
    # the clinician re-simulated from admission and its own logged stays: the same policy, CIs overlap
    t = clin["true"]
    assert t["return_ci"][0] <= logged["return_ci"][1] and logged["return_ci"][0] <= t["return_ci"][1]


def test_bad_inputs_get_one_line_and_write_nothing(cohort, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["evaluate", "--cohort", str(cohort), "--policies", "clinician,nonsense", "--out", str(out)]) == 2
    assert "unknown policy 'nonsense'" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    assert main(["evaluate", str(run), "--out", str(out)]) == 2
    assert "no agent/agent.yaml" in capsys.readouterr().err
    assert main(["evaluate", "--cohort", str(cohort), "--policies", "agent", "--out", str(out)]) == 2
    assert "needs a run folder" in capsys.readouterr().err
    # a cohort without behaviour propensities: refused unless an estimated behaviour policy is asked for
    bare = tmp_path / "bare"
    shutil.copytree(cohort, bare)
    for split in ("train", "val", "test"):
        t = pq.read_table(bare / f"{split}.parquet")
        pq.write_table(t.drop(["behaviour_prob"]), bare / f"{split}.parquet")
    assert main(["evaluate", "--cohort", str(bare), "--policies", "random", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no behaviour_prob" in err and "--behaviour estimate" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_paired_truth_by_hand():
    from sepsis_rl.eval.run import paired_truth

    ref = {"patients": [1, 2, 3, 1, 2, 3], "returns": [1.0, 2.0, 3.0, 3.0, 2.0, 1.0], "survived": [1, 1, 0, 1, 0, 0]}
    mine = {"patients": [3, 1], "returns": [5.0, 4.0], "survived": [1, 1]}
    t = paired_truth(mine, ref)
    # clinician per patient: 1 -> 2.0 / 1.0, 3 -> 2.0 / 0.0; differences 2.0 and 3.0
    assert t["diff_return_vs_clinician"] == pytest.approx(2.5)
    assert t["diff_survival_vs_clinician"] == pytest.approx(0.5)
    assert t["n_patients"] == 2 and t["return"] == pytest.approx(4.5)
    with pytest.raises(ValueError):
        paired_truth({"patients": [9], "returns": [0.0], "survived": [1]}, ref)
    assert np.isfinite(t["diff_return_ci"]).all()


def test_true_patients_per_policy_kind():
    from sepsis_rl.eval.evaluate import EvalConfig

    cfg = EvalConfig(patients=None, llm_patients=200, stage_patients=50)
    assert [cfg.true_patients(n) for n in ("clinician", "agent", "agent_no_sim", "after_bc", "after_sft", "base_llm_wm")] \
        == [None, 200, 200, 50, 50, 50]
    assert EvalConfig(patients=300, llm_patients=20).true_patients("after_bc") == 20  # default: the agent's panel
    assert EvalConfig(patients=300, llm_patients=20).true_patients("guideline") == 300
    with pytest.raises(ValueError, match="stage_patients"):
        EvalConfig(stage_patients=0)
    with pytest.raises(ValueError, match="behaviour"):
        EvalConfig(behaviour="guess")


def test_llm_tasks_reserve_the_engine_cores_and_gpus():
    from sepsis_rl.eval.evaluate import EvalConfig
    from sepsis_rl.eval.run import task_resources

    cfg = EvalConfig()
    assert task_resources("agent", cfg, 2.0) == {"num_cpus": 2.0, "num_gpus": 0.0}  # one CPU engine at a time
    assert task_resources("after_bc", cfg, 1.0)["num_cpus"] == 1.0  # capped at the cluster: always schedulable
    assert task_resources("guideline", cfg, 2.0) == {"num_cpus": 1.0}
    assert task_resources("agent", EvalConfig(llm_cpus=4, llm_gpus=1), 64.0) == {"num_cpus": 4, "num_gpus": 1}
    with pytest.raises(ValueError, match="llm_cpus and llm_gpus"):
        EvalConfig(llm_gpus=-1)


def test_stage_checkpoints_skip_logged_estimates_only_where_the_truth_compares_them():
    from types import SimpleNamespace

    from sepsis_rl.eval.evaluate import EvalConfig, logged_estimates_wanted

    plain, oracle = SimpleNamespace(), SimpleNamespace(truth_only=True)
    off = EvalConfig(stage_ope=False)
    assert not logged_estimates_wanted("after_bc", plain, off, has_truth=True)  # truth only
    assert logged_estimates_wanted("after_bc", plain, off, has_truth=False)  # an imported cohort: OPE is all there is
    assert logged_estimates_wanted("agent", plain, off, has_truth=True) and logged_estimates_wanted("cql", plain, off, True)
    assert logged_estimates_wanted("after_sft", plain, EvalConfig(), has_truth=True)  # default: every policy
    assert not logged_estimates_wanted("oracle_planner_k3", oracle, EvalConfig(), has_truth=True)
    assert not logged_estimates_wanted("oracle_planner_k3", oracle, EvalConfig(), has_truth=False)


def test_llm_dtype_reaches_the_engine_constructor():
    """vLLM gets the dtype name (it resolves auto itself); the transformers engine stays fp32 unless bf16 is asked."""
    import torch

    from sepsis_rl.eval.evaluate import EvalConfig
    from sepsis_rl.rollout.dtypes import engine_dtype_options as engine_dtype

    assert engine_dtype("vllm", "auto") == {"dtype": "auto"} and engine_dtype("vllm", "float32") == {"dtype": "float32"}
    assert engine_dtype("transformers", "auto") == {} and engine_dtype("transformers", "float32") == {}
    assert engine_dtype("transformers", "bfloat16") == {"dtype": torch.bfloat16}
    with pytest.raises(ValueError, match="llm_dtype must be one of auto, float32, bfloat16"):
        EvalConfig(llm_dtype="half")


def test_policy_probs_batches_rows_unless_the_policy_keeps_per_stay_state(cohort):
    """Stateless policies (all of ours, LLM policies included) get the logged rows in full batches; a
    stateful one gets one step per call, so each stay's decisions arrive in order."""
    from sepsis_rl.eval.evaluate import policy_probs
    from sepsis_rl.eval.logged import LoggedData
    from sepsis_rl.eval.policy import Policy

    class Recorder(Policy):
        def __init__(self, stateful):
            self.stateful, self.calls, self.name = stateful, [], "recorder"

        def action_probs(self, batch):
            self.calls.append(batch.steps.copy())
            out = np.zeros((len(batch), 25))
            out[np.arange(len(batch)), batch.steps % 25] = 1.0
            return out

    data = LoggedData.from_cohort(cohort, "test", max_episodes=12)
    for stateful in (False, True):
        policy = Recorder(stateful)
        probs = policy_probs(policy, data, 4, batch=64)
        assert np.array_equal(probs.argmax(1), data.steps % 25)  # every row answered at its own place
        sizes = [len(c) for c in policy.calls]
        if stateful:
            assert all(len(set(c.tolist())) == 1 for c in policy.calls) and len(policy.calls) == len(np.unique(data.steps))
        else:
            assert sizes == [64] * (len(data) // 64) + ([len(data) % 64] if len(data) % 64 else [])
