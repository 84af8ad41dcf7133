"""The Grafana dashboard (``cluster/grafana/``) against the metrics the code defines, both ways, and the metrics
themselves: a ``run_id`` tag on each, and Ray really exporting them under the names the panels query."""

from __future__ import annotations

import copy
import json
import socket
import time
import urllib.request

import pytest

from sepsis_rl.deploy import dashboard as d

METRICS = d.scan()
COMMITTED = json.loads(d.DASHBOARD.read_text())


def test_code_defines_the_expected_metric_families():
    names = {m.name for m in METRICS}
    assert {"sepsis_rl_sim_steps_total", "sepsis_rl_sim_batch_size", "sepsis_rl_rollout_tokens_per_s",
            "sepsis_rl_rollout_parse_failure_rate", "sepsis_rl_learner_loss", "sepsis_rl_learner_kl",
            "sepsis_rl_learner_tokens_per_s", "sepsis_rl_learner_logprob_mismatch_after_sync"} <= names
    assert all(d.re.match(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$", n) for n in names)  # Ray drops other names silently


def test_committed_dashboard_is_generated_from_the_code():
    assert COMMITTED == d.build(METRICS), "regenerate: python -m sepsis_rl.deploy.dashboard --write"


def test_every_panel_metric_is_defined_and_every_metric_has_a_panel():
    assert d.dashboard_problems(COMMITTED, METRICS) == []
    queried = set().union(*d.queried_metrics(COMMITTED).values())
    assert "sepsis_rl_sim_steps_total" in queried and "sepsis_rl_sim_batch_size_bucket" in queried


def test_problems_are_found_both_ways():
    broken = copy.deepcopy(COMMITTED)
    panel = next(p for p in broken["panels"] if p.get("targets") and "learner kl" == p["title"])
    panel["targets"][0]["expr"] = 'ray_sepsis_rl_learner_kl_divergence{run_id=~"$run_id"}'
    problems = d.dashboard_problems(broken, METRICS)
    assert "panel 'learner kl': queries sepsis_rl_learner_kl_divergence, which no code defines" in problems
    assert any(p.startswith("sepsis_rl_learner_kl (sepsis_rl/learner/metrics.py): no panel") for p in problems)
    untagged = [d.MetricDef("sepsis_rl_x", "Gauge", "", ("shard",), "f.py")]
    assert "sepsis_rl_x (f.py): tag_keys ('shard',) lack 'run_id'" in d.dashboard_problems(d.build(untagged), untagged)


def test_scanner_reads_names_kinds_and_tag_keys(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "from ray.util import metrics\nfrom ray.util.metrics import Histogram\nKEYS = ('run_id', 'route')\n"
        "def f(n):\n    keys = ('run_id',)\n"
        "    a = metrics.Counter('sepsis_rl_serve_requests_total', 'requests', tag_keys=KEYS)\n"
        "    b = Histogram('sepsis_rl_serve_latency_s', description='latency', boundaries=[1], tag_keys=keys)\n"
        "    c = metrics.Gauge(f'sepsis_rl_{n}', 'dynamic names are not dashboard metrics')\n"
        "    e = metrics.Gauge('other_metric', 'not ours')\n")
    assert d.scan_file(src, tmp_path) == [
        d.MetricDef("sepsis_rl_serve_requests_total", "Counter", "requests", ("run_id", "route"), "m.py"),
        d.MetricDef("sepsis_rl_serve_latency_s", "Histogram", "latency", ("run_id",), "m.py")]


def test_learner_metrics_accept_exactly_what_the_rl_stage_publishes():
    from sepsis_rl.curriculum.rl_stage import _gauges
    from sepsis_rl.learner.metrics import LearnerMetrics

    rec = {"loss": 0.5, "kl": 0.01, "tokens_per_s": 100.0, "train_mean_return": 1.0, "heldout_mean_return": None,
           "logprob_mismatch_after_sync": 0.001, "behaviour_logprob_mismatch": 0.002,
           "time": {"rollout_s": 1.0, "generate_s": 0.5, "simulate_s": 0.2, "score_s": 0.1, "update_s": 2.0, "sync_s": 0.3}}
    metrics = LearnerMetrics()
    metrics.publish(_gauges(rec))
    with pytest.raises(ValueError, match="'grad_norm' is not declared"):
        metrics.publish({"grad_norm": 1.0})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_exports_the_metrics_with_run_id_under_the_queried_names(monkeypatch):
    """Real Ray: an actor records through the shard's and the learner's metric code; the node's Prometheus
    endpoint then serves every series the dashboard queries for them, tagged with the job's run id."""
    import ray

    port = _free_port()
    monkeypatch.setenv("RAY_metrics_report_interval_ms", "500")
    ray.init(address="local", num_cpus=1, include_dashboard=False, _metrics_export_port=port,
             runtime_env={"env_vars": {"SEPSIS_RL_RUN_ID": "run-test-7"}})
    try:
        @ray.remote(num_cpus=0)
        class Recorder:
            def record(self) -> None:
                from sepsis_rl.learner.metrics import LearnerMetrics
                from world_model.shard import _metrics

                sim = _metrics(3)
                sim["steps"].inc(5)
                sim["batch"].observe(7)
                sim["queue"].set(1)
                sim["rate"].set(9.0)
                self.learner = LearnerMetrics()
                self.learner.publish({"loss": 0.25, "kl": 0.5, "update_s": 1.5})
                self.sim = sim

        rec = Recorder.remote()
        ray.get(rec.record.remote(), timeout=60)
        want = {"ray_sepsis_rl_sim_steps_total", "ray_sepsis_rl_sim_batch_size_bucket", "ray_sepsis_rl_sim_queue_depth",
                "ray_sepsis_rl_sim_steps_per_s", "ray_sepsis_rl_learner_loss", "ray_sepsis_rl_learner_kl",
                "ray_sepsis_rl_learner_phase_seconds"}
        deadline, text = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            tagged = {line.split("{")[0] for line in text.splitlines()
                      if line.startswith("ray_sepsis_rl_") and 'run_id="run-test-7"' in line}
            if want <= tagged:
                break
            time.sleep(1)
        assert want <= tagged, sorted(l for l in text.splitlines() if "sepsis_rl" in l)
        assert 'shard="3"' in text and 'phase="update"' in text
    finally:
        ray.shutdown()
