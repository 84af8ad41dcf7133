"""Ray Serve application: real Serve, real HTTP on loopback, an agent folder in the pipeline's export format."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from serve.agent_deployment import DecisionInput  # noqa: F401  (importable without Ray running)
from serve.validation import feature_range
from sepsis_rl.agent.fallback import default_candidates
from sepsis_rl.cohort.store import read_spec, read_split, table_features

APP, SECURE, NARROW = "sepsis-test", "sepsis-secure", "sepsis-narrow"
TOKEN = "s3cret-token"
TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def agent_dir(tiny_world, tiny_model_dir, tmp_path_factory) -> Path:
    """RUN/agent as the pipeline's final stage writes it: model/, world_model/, agent.yaml (relative paths)."""
    from sepsis_rl.curriculum.pipeline import _feature_medians  # what stage_final writes
    from world_model.checkpoint import save_world_model

    cohort, model = tiny_world
    out = tmp_path_factory.mktemp("run") / "agent"
    out.mkdir()
    shutil.copytree(tiny_model_dir, out / "model")
    save_world_model(model, out / "world_model")
    (out / "feature_medians.json").write_text(json.dumps(_feature_medians(cohort)))
    (out / "agent.yaml").write_text(yaml.safe_dump({
        "model": "model", "world_model": "world_model", "feature_medians": "feature_medians.json",
        "agent": {"k": 3, "horizon": 2, "temperature": 0.0}, "run_id": "test-run"}))
    return out


@pytest.fixture(scope="module")
def cohort_history(tiny_world) -> list[dict]:
    """Two consecutive charted steps of one validation patient, as a client would send them."""
    cohort, _ = tiny_world
    spec = read_spec(cohort)
    table = read_split(cohort, "val", spec)
    x = table_features(table, spec)
    ep = table.column("episode_id").to_numpy()
    rows = np.flatnonzero(ep == ep[0])[:2]
    return [{n: float(x[r, i]) for i, n in enumerate(spec.feature_names)} for r in rows]


@pytest.fixture(scope="module")
def server(agent_dir):
    import ray
    from ray import serve

    from serve.app import AppArgs, build_app

    os.environ["SEPSIS_TEST_KEY"] = TOKEN  # inherited by the replicas of this local Ray instance
    port = _free_port()
    # logical CPUs: two apps (4 replicas' worth of 0.1-0.5 CPU each) must all be scheduled on a 2-core box
    ray.init(address="local", num_cpus=6, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # the main app on the default engine (auto: vLLM where installed, as in CI; transformers on a plain
        # install); the others test Serve's mechanics (replicas, auth, overload) on the light transformers engine
        serve.run(build_app(AppArgs(agent_dir=str(agent_dir), max_batch_size=32, batch_wait_timeout_s=0.2)),
                  name=APP, route_prefix="/", blocking=False)
        light = {"engine": "transformers", "engine_cpus": 0.5}
        serve.run(build_app(AppArgs(agent_dir=str(agent_dir), replicas=2, api_key_env="SEPSIS_TEST_KEY", **light)),
                  name=SECURE, route_prefix="/secure", blocking=False)
        serve.run(build_app(AppArgs(agent_dir=str(agent_dir), batching=False, max_queued_requests=1, **light)),
                  name=NARROW, route_prefix="/narrow", blocking=False)  # 8 ongoing + 1 queued, then 503
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def post(url: str, body, **kw) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(url, data=data, headers={"Content-Type": "application/json", **kw.pop("headers", {})},
                         timeout=TIMEOUT, **kw)


def recommend_body(history, **options) -> dict:
    return {"patient": {"history": history, "last_action": {"fluid_bin": 1, "vaso_bin": 2}}, "options": options}


# ------------------------------------------------------------------------------------------ no Ray
def test_replica_death_is_retried_and_the_requests_own_failure_is_not():
    import asyncio

    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import ReplicaUnavailableError

    from serve.ingress import call_with_replica_retry

    calls: list[int] = []

    def flaky(failures: list[Exception]):
        async def call():
            calls.append(1)
            if failures:
                raise failures.pop(0)
            return "answer"
        return call

    run = lambda call, retries=3: asyncio.run(call_with_replica_retry(call, "/t", retries, backoff_s=0.0))  # noqa: E731
    assert run(flaky([ActorDiedError(), ReplicaUnavailableError("r1")])) == "answer" and len(calls) == 3
    calls.clear()
    with pytest.raises(ActorDiedError):  # retries exhausted: the death surfaces (a 500, not a hang)
        run(flaky([ActorDiedError()] * 3), retries=2)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(ValueError):  # the request's (or the engine's) own failure is not sent again
        run(flaky([ValueError("bad")]))
    assert len(calls) == 1


def test_engine_auto_is_vllm_where_installed():
    from sepsis_rl.rollout.engine_choice import resolve_engine

    assert resolve_engine("auto", installed=True) == "vllm"
    assert resolve_engine("auto", installed=False) == "transformers"
    assert resolve_engine("transformers", installed=True) == "transformers"
    with pytest.raises(ValueError, match="vLLM is not installed"):
        resolve_engine("vllm", installed=False)
    with pytest.raises(ValueError, match="engine must be one of"):
        resolve_engine("llama")


def test_replicas_the_cluster_cannot_hold_are_named_before_deploying():
    from serve.app import AppArgs, agent_resources, missing_resources

    two_gpu = AppArgs(agent_dir="x", engine="transformers", replicas=2, engine_gpus=1.0)
    assert agent_resources(two_gpu) == {"num_cpus": 1.0, "num_gpus": 1.0}
    msg = missing_resources(two_gpu, {"CPU": 2.0})
    assert msg is not None and "\n" not in msg and "missing CPU 0.35, GPU 2" in msg and "GPU 0" in msg
    assert missing_resources(two_gpu, {"CPU": 8.0, "GPU": 2.0}) is None
    cpu = AppArgs(agent_dir="x", engine="transformers", replicas=2, engine_cpus=0.5)
    assert agent_resources(cpu) == {"num_cpus": 0.5} and missing_resources(cpu, {"CPU": 2.0}) is None


def test_serve_cli_refuses_an_unschedulable_deployment_in_one_line(agent_dir, capsys):
    from sepsis_rl.cli import main

    t0 = time.perf_counter()
    assert main(["serve", str(agent_dir), "--engine", "transformers", "--replicas", "2", "--engine-gpus", "1",
                 "--num-cpus", "2", "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert time.perf_counter() - t0 < 60
    assert len(err) == 1 and "missing" in err[0] and "GPU 2" in err[0], err


def _assert_api_body(r: requests.Response) -> None:
    """The API's own body (``{"error": {...}}`` or a result), never FastAPI's ``{"detail": ...}``."""
    body = r.json()
    assert "detail" not in body, (r.status_code, r.text[:300])


def test_committed_config_equals_a_fresh_build():
    from serve.config_build import CONFIG_PATH, committed_args, render_config

    assert render_config(committed_args()) == CONFIG_PATH.read_text()


def test_plausible_ranges_hold_every_synthetic_value(tiny_world):
    cohort, _ = tiny_world
    spec = read_spec(cohort)
    x = table_features(read_split(cohort, "train", spec), spec)
    for i, name in enumerate(spec.feature_names):
        lo, hi = feature_range(spec, name)
        assert lo <= x[:, i].min() and x[:, i].max() <= hi, name


# ------------------------------------------------------------------------------------- happy paths
@pytest.mark.slow
def test_health_models_schema(server, tiny_world):
    for path in ("/healthz", "/readyz", "/v1/models", "/v1/schema"):
        r = requests.get(f"{server}{path}", timeout=TIMEOUT)
        assert r.status_code == 200, (path, r.text[:300])
        _assert_api_body(r)
    assert requests.get(f"{server}/healthz", timeout=TIMEOUT).json() == {"status": "ok"}
    assert requests.get(f"{server}/readyz", timeout=TIMEOUT).json()["ready"] is True
    models = requests.get(f"{server}/v1/models", timeout=TIMEOUT).json()["data"]
    assert [m["id"] for m in models] == ["sepsis-rl-agent/test-run", "sepsis-rl-world-model/test-run"]
    from sepsis_rl.rollout.engine_choice import resolve_engine

    assert models[0]["engine"] == resolve_engine("auto")  # the default engine, shown to clients
    schema = requests.get(f"{server}/v1/schema", timeout=TIMEOUT).json()
    spec = read_spec(tiny_world[0])
    assert [f["name"] for f in schema["features"]] == spec.feature_names
    meanbp = next(f for f in schema["features"] if f["name"] == "MeanBP")
    assert meanbp["unit"] == "mmHg" and meanbp["range"] == [0, 300] and not meanbp["static"]
    assert len(schema["actions"]) == 25
    assert schema["actions"][7] == {"index": 7, "fluid_bin": 1, "vaso_bin": 2,
                                    "fluid_ml_4h": spec.fluid.representative[1], "vaso_mcg_kg_min": spec.vaso.representative[2]}
    assert schema["imputation"]["medians"] == "feature_medians.json"


@pytest.mark.slow
def test_recommend_is_the_agents_procedure(server, cohort_history, agent_dir):
    from serve.world_model_deployment import SimulationCall, WorldModelService

    r = post(f"{server}/v1/recommend", recommend_body(cohort_history))
    assert r.status_code == 200, r.text
    ans = r.json()
    assert ans["model"] == {"agent": "sepsis-rl-agent/test-run", "world_model": "sepsis-rl-world-model/test-run"}
    assert ans["imputed_features"] == []
    cands = [c["index"] for c in ans["candidates"]]
    assert len(cands) == 3 and ans["reasoning"]
    # a random tiny LLM writes no valid protocol: the documented fallbacks apply and are reported
    if ans["parse_failure"] and "proposal" in ans["parse_failure"]:
        assert cands == default_candidates(7, 3)
    if ans["parse_failure"] and "prescription" in ans["parse_failure"]:
        assert ans["fallback_used"] and ans["action"]["index"] == 7  # repeat the running prescription
    # the candidates' outcomes are the world model's, computed as in training
    svc = WorldModelService(str(agent_dir))
    names = svc.model.feature_names
    hist = np.array([[s[n] for n in names] for s in cohort_history])
    ref = svc.simulate_many([SimulationCall([hist], np.array([cands]), 2)])[0]
    for k, c in enumerate(ans["candidates"]):
        assert c["death_risk"] == pytest.approx(ref.risk_of_death[0, k], abs=1e-9)
        assert c["predicted"]["MeanBP"] == pytest.approx(ref.map[0, k, -1], abs=1e-3)


@pytest.mark.slow
def test_simulate_and_imputation(server, cohort_history):
    schema = requests.get(f"{server}/v1/schema", timeout=TIMEOUT).json()
    median = {f["name"]: f["median"] for f in schema["features"]}
    full = [dict(s) for s in cohort_history]
    full[0]["HR"] = median["HR"]
    full[1]["MeanBP"] = full[0]["MeanBP"]
    holes = [dict(s) for s in cohort_history]
    del holes[0]["HR"], holes[1]["MeanBP"]  # median at the first step; carried forward at the second
    body = lambda h: {"patient": {"history": h, "last_action": None}, "actions": [0, 24], "horizon": 2}  # noqa: E731
    a, b = post(f"{server}/v1/simulate", body(full)), post(f"{server}/v1/simulate", body(holes))
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert b.json()["imputed_features"] == ["HR", "MeanBP"] and a.json()["imputed_features"] == []
    for x, y in zip(a.json()["actions"], b.json()["actions"]):
        assert x["death_risk"] == pytest.approx(y["death_risk"], rel=1e-3)
        assert x["trajectory"]["MeanBP"] == pytest.approx(y["trajectory"]["MeanBP"], rel=1e-3)
    rows = a.json()["actions"]
    assert [r["index"] for r in rows] == [0, 24] and len(rows[0]["trajectory"]["SOFA"]) == 2
    assert 0 <= rows[1]["death_risk"] <= 1 and rows[1]["uncertainty"] >= 0


@pytest.mark.slow
def test_seed_makes_sampling_reproducible(server, cohort_history):
    answers = [post(f"{server}/v1/recommend", recommend_body(cohort_history, temperature=1.0, seed=s)).json()
               for s in (7, 7, 8)]
    assert answers[0]["reasoning"] == answers[1]["reasoning"] and answers[0]["action"] == answers[1]["action"]
    assert answers[0]["reasoning"] != answers[2]["reasoning"]


@pytest.mark.slow
def test_32_concurrent_requests_are_batched(server, cohort_history):
    from ray import serve

    stats = serve.get_deployment_handle("AgentDeployment", app_name=APP).stats
    before = stats.remote().result(timeout_s=30)["batch_sizes"]
    with ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(lambda _: post(f"{server}/v1/recommend", recommend_body(cohort_history)).status_code,
                              range(32)))
    assert codes == [200] * 32
    after = stats.remote().result(timeout_s=30)["batch_sizes"]
    new = {int(k): after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}
    assert sum(k * n for k, n in new.items()) == 32 and max(new) > 1, new


# -------------------------------------------------------------------------------------- bad input
def _bad_cases(history):
    h = lambda **kv: [dict(history[0], **kv)]  # noqa: E731
    ok = recommend_body(history)
    return [
        ("unknown feature", recommend_body(h(Foo=1.0)), 422, "unknown_feature", "patient.history[0].Foo"),
        ("non-numeric", recommend_body(h(HR="fast")), 422, "not_a_number", "patient.history[0].HR"),
        ("non-finite", json.dumps(recommend_body(h(HR=float("nan")))), 422, "not_finite", "patient.history[0].HR"),
        ("out of range", recommend_body(h(MeanBP=1000.0)), 422, "out_of_range", "patient.history[0].MeanBP"),
        ("empty history", recommend_body([]), 422, "empty_history", "patient.history"),
        ("history too long", recommend_body(history[:1] * 65), 422, "history_too_long", "patient.history"),
        ("bin out of 0..4", {**ok, "patient": {"history": history, "last_action": {"fluid_bin": 5, "vaso_bin": 0}}},
         422, "less_than_equal", "patient.last_action.fluid_bin"),
        ("unknown option", {**ok, "options": {"candidates": 3, "bogus": 1}}, 422, "extra_forbidden", "options.bogus"),
        ("too many candidates", {**ok, "options": {"candidates": 99}}, 422, "less_than_equal", "options.candidates"),
        ("not JSON", "{not json", 400, "invalid_json", None),
        ("body over 1 MB", json.dumps({**ok, "pad": "x" * 1_100_000}), 413, "body_too_large", None),
    ]


@pytest.mark.slow
def test_every_bad_input_gets_its_4xx(server, cohort_history):
    for name, body, status, code, param in _bad_cases(cohort_history):
        r = post(f"{server}/v1/recommend", body)
        _assert_api_body(r)
        err = r.json()["error"]
        assert (r.status_code, err["code"], err["param"]) == (status, code, param), (name, r.text)
        assert err["type"] == "invalid_request_error" and err["message"]
        if param:
            assert param.split(".")[-1].split("[")[0] in err["message"], (name, err["message"])
    sim = {"patient": {"history": cohort_history}, "actions": [3, 25], "horizon": 2}
    r = post(f"{server}/v1/simulate", sim)
    assert r.status_code == 422 and r.json()["error"]["param"] == "actions[1]"
    r = requests.get(f"{server}/v2/nothing", timeout=TIMEOUT)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# ------------------------------------------------------------------------------ auth and replicas
@pytest.mark.slow
def test_token_mode(server):
    base = f"{server}/secure"
    assert requests.get(f"{base}/healthz", timeout=TIMEOUT).status_code == 200
    for path in ("/readyz", "/v1/models", "/v1/schema"):
        r = requests.get(f"{base}{path}", timeout=TIMEOUT)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
        assert requests.get(f"{base}{path}", headers={"Authorization": "Bearer wrong"}, timeout=TIMEOUT).status_code == 401
        assert requests.get(f"{base}{path}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT).status_code == 200
    assert post(f"{base}/v1/recommend", {}).status_code == 401


@pytest.mark.slow
def test_killing_a_replica_keeps_the_service_answering(server, cohort_history):
    import ray

    base, auth = f"{server}/secure", {"Authorization": f"Bearer {TOKEN}"}
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if SECURE in a["name"] and "AgentDeployment" in a["name"]]
    assert len(replicas) == 2, replicas
    codes: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            try:
                codes.append(post(f"{base}/v1/recommend", recommend_body(cohort_history), headers=auth).status_code)
            except requests.RequestException:
                codes.append(-1)

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    while len(codes) < 2:  # the stream is running on both replicas
        time.sleep(0.2)
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    at_kill, deadline = len(codes), time.time() + 90
    while len(codes) < at_kill + 12 and time.time() < deadline:  # 12 answers after the kill
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(TIMEOUT)
    failed = sum(c != 200 for c in codes)
    print(f"replica kill: {len(codes)} requests, {failed} failed ({at_kill} answered before the kill)")
    assert failed == 0, codes  # the requests in flight on the killed replica were answered by the other one


@pytest.mark.slow
def test_overload_answers_503_with_retry_after_over_http(server, cohort_history):
    """More concurrent requests than the narrow app's agent replica takes (8 ongoing + 1 queued): the rest get
    503 + Retry-After at once, in the API's error shape, and the service answers again afterwards."""
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: post(f"{server}/narrow/v1/recommend", recommend_body(cohort_history)), range(32)))
    codes = [r.status_code for r in answers]
    busy = [r for r in answers if r.status_code == 503]
    assert set(codes) <= {200, 503} and busy and 200 in codes, codes
    assert all(r.headers["Retry-After"] == "2" and r.json()["error"]["code"] == "overloaded" for r in busy)
    assert post(f"{server}/narrow/v1/recommend", recommend_body(cohort_history)).status_code == 200


def test_agent_yaml_records_prompt_style_and_fallback(agent_dir, tmp_path):
    from serve.agent_dir import AgentDirError, load_agent_dir

    old = load_agent_dir(agent_dir).settings  # an agent.yaml from before styles were recorded
    assert (old.prompt_style, old.fallback) == ("verbose", "repeat_last")
    new = tmp_path / "agent"
    shutil.copytree(agent_dir, new)
    meta = yaml.safe_load((new / "agent.yaml").read_text())
    meta["agent"] |= {"prompt_style": "compact", "fallback": "best_candidate"}
    (new / "agent.yaml").write_text(yaml.safe_dump(meta))
    s = load_agent_dir(new).settings
    assert (s.prompt_style, s.fallback, s.k, s.horizon) == ("compact", "best_candidate", 3, 2)
    meta["agent"]["prompt_style"] = "chatty"
    (new / "agent.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(AgentDirError, match="field 'agent'.*prompt style"):
        load_agent_dir(new)


def test_imputation_by_hand(tiny_world):
    from serve.validation import HistoryValidator

    spec = read_spec(tiny_world[0])
    names = spec.feature_names
    medians = np.arange(len(names), dtype=float)
    v = HistoryValidator(spec, medians, max_history=4)
    out = v.validate([{"MeanBP": 60.0, "HR": 100}, {"age": 70, "MeanBP": 55.0}])
    col = lambda n: out.states[:, names.index(n)].tolist()  # noqa: E731
    assert col("age") == [70, 70]  # static: known at every step once sent
    assert col("HR") == [100, 100]  # carried forward
    assert col("MeanBP") == [60, 55]
    assert col("SOFA") == [names.index("SOFA")] * 2  # never sent: the median, then carried
    assert "age" not in out.imputed_features and {"HR", "SOFA", "Weight_kg"} <= set(out.imputed_features)
    assert "MeanBP" not in out.imputed_features


def test_failures_map_to_500_and_overload_to_503_with_retry_after():
    """The ingress's one status decision point, driven directly (no cluster needed to make an engine fail)."""
    import asyncio

    from ray.serve.exceptions import BackPressureError

    from serve.ingress import Ingress

    class _Metrics:
        seen: list = []

        def observe(self, route, status, seconds):
            self.seen.append((route, status))

    plain = next(c for c in Ingress.func_or_class.__mro__ if c.__module__ == "serve.ingress")  # not Serve's ASGI wrapper
    ingress = object.__new__(plain)
    ingress.api_key, ingress.metrics = None, _Metrics()

    async def engine_failure():
        raise RuntimeError("CUDA error: device-side assert")

    async def overloaded():
        raise BackPressureError(num_queued_requests=256, max_queued_requests=256)

    failed = asyncio.run(ingress._run("/v1/recommend", None, engine_failure))
    assert failed.status_code == 500
    assert json.loads(failed.body)["error"]["type"] == "server_error" and "CUDA error" in json.loads(failed.body)["error"]["message"]
    busy = asyncio.run(ingress._run("/v1/recommend", None, overloaded))
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
    assert json.loads(busy.body)["error"]["code"] == "overloaded"
    assert ingress.metrics.seen == [("/v1/recommend", 500), ("/v1/recommend", 503)]
