"""The tiny pipeline end to end through the CLI, killed in the middle of RL and resumed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml


def _cmd(out, *extra):
    # the tiny random model always falls back, so a group's episodes (sharing the simulator's noise) get equal
    # returns: dynamic sampling would skip every update; this test is about resuming, so it keeps the updates
    return [sys.executable, "-m", "sepsis_rl.cli", "pipeline", "--preset", "tiny", "--out", str(out), "--no-dashboard",
            "--set", "rl.iterations=3", "--set", "rl.dynamic_sampling=false", *extra]


def test_tiny_pipeline_killed_during_rl_resumes_and_finishes(tmp_path, default_model_dir):
    """Killed after two RL checkpoints; the run folder is then moved (the original is gone) and its newest
    checkpoint truncated: --resume continues from the moved folder's previous checkpoint, with a warning."""
    first = tmp_path / "first"
    second = first / "rl" / "checkpoints" / "iter-000002"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(_cmd(first), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 400
        while not second.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started (Ray included)
        proc.wait()
    assert second.exists(), (tmp_path / "first.log").read_text()[-3000:]
    state = json.loads((first / "state.json").read_text())
    assert {"cohort", "world_model", "sft", "bc"} <= set(state["stages"]) and "rl" not in state["stages"]
    assert all(not os.path.isabs(s["output"]) for s in state["stages"].values())

    out = tmp_path / "moved"
    shutil.copytree(first, out)
    shutil.rmtree(first)  # a copy that still read the original's models would now fail
    checkpoints = sorted((out / "rl" / "checkpoints").glob("iter-*"))
    newest = checkpoints[-1] / "rank0.pt"
    newest.write_bytes(newest.read_bytes()[:1000])

    # the same command without --resume refuses to touch the run; with --resume it continues
    refused = subprocess.run(_cmd(out), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    done = subprocess.run(_cmd(out, "--resume"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{checkpoints[-1].name} is unusable" in done.stderr and "falling back to the previous one" in done.stderr

    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["iteration"] == int(checkpoints[-2].name[5:])
    assert resumed[0]["checkpoint"] == f"rl/checkpoints/{checkpoints[-2].name}"
    summary = json.loads((out / "summary.json").read_text())
    rl = summary["stages"]["rl"]
    assert [h["iteration"] for h in rl["history"]] == [0, 1, 2, 3]  # no iteration lost or repeated
    assert rl["iterations"] == 3 and len(rl["train_mean_return"]) == 3
    assert all(m < 1e-3 for m in rl["logprob_mismatch_after_sync"])
    assert all(0 <= z <= 1 for z in rl["zero_variance_group_frac"]) and len(rl["entropy"]) == 3
    assert all(k is not None and k >= 0 for k in rl["kl_to_previous"])
    changed = rl["heldout_decisions_changed"]  # held-out greedy decisions differing from stage 2's
    assert changed[0] is None and all(c is None or 0 <= c <= 1 for c in changed[1:]) and changed[-1] is not None
    assert set(rl["time_per_iteration"][0]) == {"rollout_s", "generate_s", "simulate_s", "score_s", "update_s", "sync_s"}
    sft, bc = summary["stages"]["sft"], summary["stages"]["bc"]
    assert sft["loss_end"] < sft["loss_start"] and sft["heldout_nll_end"] < sft["heldout_nll_start"]
    assert 0 <= bc["action_accuracy"] <= 1 and 0 <= bc["majority_rate"] <= 1
    cmp = summary["heldout_comparison"]
    assert {"agent", "agent_before_rl", "clinician", "random"} <= set(cmp)
    for stage in ("cohort", "world_model", "sft", "bc", "rl", "final", "evaluate"):
        assert summary["stages"][stage]["wall_s"] >= 0
    assert cmp["value_kind"].startswith("in-model")
    # the evaluate stage: true values (ground truth) and off-policy estimates of the agent and the references
    headline = summary["evaluation"]["policies"]
    assert {"agent", "clinician", "random", "wm_planner_k3"} <= set(headline)
    for name in ("agent", "clinician"):
        assert headline[name]["status"] == "ok" and -40 <= headline[name]["true_return"] <= 40
        assert headline[name]["dr"] is not None
    report = json.loads((out / "eval" / "report.json").read_text())
    # the agent on llm_patients, the stage checkpoint on the first stage_patients of them, paired with the clinician
    assert headline["agent"]["true_patients"] == 3 and headline["after_bc"]["true_patients"] == 2
    assert "survival_vs_clinician_ci" in headline["after_bc"] and 0 <= headline["agent"]["fallback_rate"] <= 1
    agent = report["policies"]["agent"]
    assert agent["n_ope_episodes"] == 2  # llm_stays
    assert agent["llm"]["decisions"] > agent["n_decisions"]  # truth rollouts' decisions count too, not only logged rows
    # one engine for both LLM policies: the agent started it, after_bc's weights were loaded into it
    assert agent["engine_swaps"] == 0 and report["policies"]["after_bc"]["engine_swaps"] == 1
    assert summary["stages"]["evaluate"]["failed"] == []
    agent = out / "agent"
    assert (agent / "model" / "config.json").exists() and (agent / "model" / "model.safetensors").exists()
    assert (agent / "world_model" / "config.json").exists() and (agent / "agent.yaml").exists()
    meta = yaml.safe_load((agent / "agent.yaml").read_text())  # self-contained: every path inside agent/
    for key in ("model", "world_model", "cohort_spec", "feature_medians"):
        assert not os.path.isabs(meta[key]) and (agent / meta[key]).exists()
    assert json.loads((agent / "cohort.json").read_text()) == json.loads((out / "cohort" / "cohort.json").read_text())
    assert len(list((out / "rl" / "checkpoints").glob("iter-*"))) == 2  # the last K=2 kept


def test_pipeline_config_errors_are_clear(tmp_path):
    from sepsis_rl.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("rl: {iteratons: 3}\n")
    assert main(["pipeline", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    bad.write_text("rl: {iterations: three}\n")
    with pytest.raises(Exception, match="rl.iterations must be int"):
        from sepsis_rl.curriculum.config import load_config

        load_config(str(bad))
    assert main(["pipeline", "--preset", "tiny", "--out", str(tmp_path / "r"), "--set", "nonsense"]) == 2
    assert not (tmp_path / "r").exists()


def test_train_one_stage_runs_only_what_it_needs(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sepsis_rl.cli", "train", "--stage", "sft", "--config", "tiny", "--out", str(out),
           "--no-dashboard"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((out / "state.json").read_text())
    assert set(state["stages"]) == {"cohort", "world_model", "sft"}  # what sft needs, and no more
    assert (out / "sft" / "model" / "model.safetensors").exists()
