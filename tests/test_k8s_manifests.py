"""Offline validation of ``k8s/`` (KubeRay RayJob, RayService, RayCluster, PVCs) and ``k8s/Dockerfile``.

Every committed document passes every rule; each rule then rejects a broken copy with a message naming the field.
The KubeRay CRD schemas are read from ``../shared/kuberay-crds`` beside the clone (or ``$SEPSIS_RL_KUBERAY_CRDS``);
only the tests that need them skip where that folder is absent.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from sepsis_rl.deploy import manifests as m

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
CRDS = Path(m.default_crd_dir(ROOT))
HAVE_CRDS = (CRDS / "ray.io_rayjobs.yaml").is_file()
SERVE_CONFIG = ROOT / "serve" / "config.yaml"
PINS = m.Pins.from_pyproject(ROOT / "pyproject.toml")
needs_crds = pytest.mark.skipif(not HAVE_CRDS, reason=f"pinned KubeRay CRDs not found at {CRDS} (../shared/kuberay-crds)")


@pytest.fixture(scope="module")
def docs() -> dict[str, m.Doc]:
    return {d.file.removeprefix("k8s/"): d for d in m.load_documents(K8S)}


def serve_reference() -> dict[str, Any] | None:
    return yaml.safe_load(SERVE_CONFIG.read_text()) if SERVE_CONFIG.is_file() else None


def test_the_three_kinds_for_both_targets(docs):
    kinds = {(f, d.kind) for f, d in docs.items()}
    for target in ("cpu", "gpu"):
        assert {(f"{target}/rayjob.yaml", "RayJob"), (f"{target}/rayservice.yaml", "RayService"),
                (f"{target}/raycluster.yaml", "RayCluster"), (f"{target}/storage.yaml", "PersistentVolumeClaim")} <= kinds


def test_every_document_passes_every_rule(docs):
    crds = CRDS if HAVE_CRDS else None
    problems = [p for d in docs.values() for p in m.check(d, crds, PINS, serve_reference())]
    assert problems == []


@needs_crds
def test_ray_documents_validate_against_the_pinned_crds(docs):
    ray_docs = [d for d in docs.values() if d.kind in m.RAY_KINDS]
    assert len(ray_docs) == 6
    assert [p for d in ray_docs for p in m.schema_errors(d, CRDS)] == []


def test_dockerfile_uses_the_pinned_ray_and_python():
    assert PINS.base_image == "rayproject/ray:2.60.0-py311"
    assert m.dockerfile_errors(K8S / "Dockerfile", PINS) == []


def test_gpu_job_fits_the_gpu_preset_exactly(docs):
    """4 learner ranks + 4 vLLM workers (1 GPU each) on two 4-GPU pods; a third pod would idle, one is too few."""
    bundles = m.preset_bundles("gpu")
    assert sum(b.gpu for b in bundles) == 8 and sum(b.cpu for b in bundles) == 40
    nodes = m.cluster_nodes(docs["gpu/rayjob.yaml"])
    assert sorted((n.cpu, n.gpu) for n in nodes) == [(0, 0), (20, 4), (20, 4)]
    assert m.fits(bundles, nodes)
    assert not m.fits(bundles, nodes[:2])


def test_serve_config_is_the_committed_one(docs):
    """serveConfigV2 = serve/config.yaml except agent_dir/engine/replicas and the http host (the cluster's values)."""
    for f in ("cpu/rayservice.yaml", "gpu/rayservice.yaml"):
        cfg = m.serve_config(docs[f])
        assert cfg["applications"][0]["import_path"] == "serve.app:build_app"
        assert {"agent_dir", "engine", "replicas", "api_key_env"} <= set(cfg["applications"][0]["args"])
    ref = serve_reference()
    if ref is None:
        pytest.skip("serve/config.yaml is not on this branch yet: serveConfigV2 checked by ServeDeploySchema only "
                    "(test_every_document_passes_every_rule); the equality check runs once it is committed")
    for f in ("cpu/rayservice.yaml", "gpu/rayservice.yaml"):
        cfg = m.serve_config(docs[f])
        assert m.for_cluster(ref, cfg) == cfg, f"{f}: serveConfigV2 differs from serve/config.yaml"
        module, attr = cfg["applications"][0]["import_path"].split(":")
        assert callable(getattr(__import__(module, fromlist=[attr]), attr))


def test_for_cluster_overrides_only_the_cluster_values():
    ref = {"http_options": {"host": "127.0.0.1", "port": 8000},
           "applications": [{"name": "a", "import_path": "serve.app:build_app",
                             "args": {"agent_dir": "runs/x/agent", "engine": "transformers", "replicas": 1,
                                      "api_key_env": None}}]}
    ours = copy.deepcopy(ref)
    ours["http_options"]["host"] = "0.0.0.0"
    ours["applications"][0]["args"].update(agent_dir="/mnt/runs/x/agent", engine="vllm", replicas=2)
    assert m.for_cluster(ref, ours) == ours
    ours["applications"][0]["args"]["api_key_env"] = "KEY"
    assert m.for_cluster(ref, ours) != ours
    doc = m.Doc("k8s/x.yaml", {"kind": "RayService", "metadata": {"name": "s"},
                               "spec": {"serveConfigV2": yaml.safe_dump(ours), "rayClusterConfig": {}}})
    assert any("spec.serveConfigV2: differs from serve/config.yaml" in p for p in m.serve_errors(doc, ref))


# ------------------------------------------------------------------------------------- negative tests
def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation: set (or with value=DELETE, remove) a dotted path; [i] indexes lists."""
    def apply(body: dict) -> None:
        keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
        node = body
        for k in keys[:-1]:
            node = node[k]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return apply


DELETE = object()
JOB_GPU = "spec.rayClusterSpec.workerGroupSpecs[0]"
JOB_GPU_C = f"{JOB_GPU}.template.spec.containers[0]"


def _multi(*fs: Callable[[dict], None]) -> Callable[[dict], None]:
    def apply(body: dict) -> None:
        for f in fs:
            f(body)
    return apply


def _serve(edit: Callable[[dict], None]) -> Callable[[dict], None]:
    def apply(body: dict) -> None:
        cfg = yaml.safe_load(body["spec"]["serveConfigV2"])
        edit(cfg)
        body["spec"]["serveConfigV2"] = yaml.safe_dump(cfg)
    return apply


NEGATIVE = [  # (file, mutation, field path named in the message, words in the message)
    ("gpu/rayjob.yaml", _set(f"{JOB_GPU}.minReplicas", 3), f"{JOB_GPU}.minReplicas", "minReplicas 3 > maxReplicas 2"),
    ("gpu/rayjob.yaml", _multi(_set(f"{JOB_GPU}.rayStartParams", {"num-gpus": "4"}), _set(f"{JOB_GPU}.resources", {"GPU": "4"})),
     f"{JOB_GPU}.resources", "resources set twice"),
    ("gpu/rayjob.yaml", _set("spec.shutdownAfterJobFinishes", False), "spec.ttlSecondsAfterFinished",
     "needs shutdownAfterJobFinishes"),
    ("gpu/rayjob.yaml", _set("metadata.name", "Sepsis_RL"), "metadata.name", "DNS-1035"),
    ("gpu/rayjob.yaml", _set("metadata.name", "a" * 48), "metadata.name", "longer than 47"),
    ("gpu/rayjob.yaml", _set("spec.submissionMode", "K8sMode"), "spec.submissionMode", "not one of"),
    ("gpu/rayjob.yaml", _set("spec.runtimeEnvYAML", "env_vars: [unclosed"), "spec.runtimeEnvYAML", "not valid YAML"),
    ("gpu/rayjob.yaml", _set("spec.runtimeEnvYAML", "env_vars: {A: 1}"), "spec.runtimeEnvYAML", "not a valid Ray runtime env"),
    ("gpu/rayjob.yaml", _set("spec.entrypoint", "sepsis-rl pipeline --preset huge --out /mnt/runs/x"),
     "spec.entrypoint", "invalid choice: 'huge'"),
    ("gpu/rayjob.yaml", _set("spec.entrypoint", "sepsis-rl pipeline --preset gpu --out /mnt/runs/x --epochs 3"),
     "spec.entrypoint", "unrecognized arguments: --epochs"),
    ("gpu/rayjob.yaml", _set("spec.entrypoint", "python -m train"), "spec.entrypoint", "not a sepsis-rl command"),
    ("gpu/rayjob.yaml", _set("spec.entrypoint", "sepsis-rl pipeline --preset gpu --out /tmp/run"),
     "spec.entrypoint", "--out /tmp/run is not on a PersistentVolumeClaim"),
    ("gpu/rayjob.yaml", _set("spec.rayClusterSpec.rayVersion", "2.59.0"), "spec.rayClusterSpec.rayVersion",
     "!= the Ray pin 2.60.0"),
    ("gpu/rayjob.yaml", _set(f"{JOB_GPU_C}.image", "sepsis-rl:0.1.0"), f"{JOB_GPU_C}.image", "needs the -gpu image"),
    ("gpu/rayjob.yaml", _set(f"{JOB_GPU_C}.image", "rayproject/ray:2.60.0-py311-gpu"), f"{JOB_GPU_C}.image",
     "not the project image"),
    ("gpu/rayjob.yaml", _multi(_set(f"{JOB_GPU}.maxReplicas", 1), _set(f"{JOB_GPU}.minReplicas", 1),
                               _set(f"{JOB_GPU}.replicas", 1)),
     "spec.rayClusterSpec.workerGroupSpecs", "do not fit"),
    ("gpu/rayjob.yaml", _set(f"{JOB_GPU}.maxReplicas", 3), "spec.rayClusterSpec.workerGroupSpecs", "4 of 12 GPUs would sit idle"),
    ("gpu/rayjob.yaml", _set(f"{JOB_GPU_C}.resources.requests", {"cpu": "20", "memory": "320Gi", "nvidia.com/gpu": "2"}),
     f"{JOB_GPU_C}.resources.limits.nvidia.com/gpu", "must equal requests"),
    ("gpu/rayjob.yaml", _set(f"{JOB_GPU}.template.spec.tolerations", []), f"{JOB_GPU}.template.spec.tolerations",
     "toleration"),
    ("gpu/rayjob.yaml", _set("spec.entrypointNumGpus", 1), "spec.entrypointNumGpus", "driver needs no GPU"),
    ("gpu/rayjob.yaml", _set("spec.rayClusterSpec.authOptions", DELETE), "spec.rayClusterSpec.authOptions.mode", "token"),
    ("gpu/rayjob.yaml", _set(f"{JOB_GPU_C}.volumeMount", []), f"{JOB_GPU}.template.spec.containers[0]", "volumeMount"),
    ("gpu/raycluster.yaml", _set("spec.workerGroupSpecs[0].maxReplicas", 1), "spec.workerGroupSpecs", "do not fit"),
    ("gpu/rayservice.yaml", _serve(lambda c: c["applications"][0]["args"].update(replicas=5)),
     "spec.rayClusterConfig.workerGroupSpecs", "up to 5 vLLM replicas"),
    ("gpu/rayservice.yaml", _serve(lambda c: c["applications"][0].update(import_path="serve.app")),
     "spec.serveConfigV2.applications[0].import_path", "not 'package.module:attribute'"),
    ("gpu/rayservice.yaml", _serve(lambda c: c["applications"][0].pop("import_path")), "spec.serveConfigV2",
     "rejected by ServeDeploySchema"),
    ("gpu/rayservice.yaml", _serve(lambda c: c["applications"][0].update(argz={})), "spec.serveConfigV2.applications[0].argz",
     "unknown field"),
    ("gpu/rayservice.yaml", _serve(lambda c: c["applications"][0]["args"].update(agent_dir="/data/agent")),
     "spec.serveConfigV2.applications[0].args.agent_dir", "not on a PersistentVolumeClaim"),
    ("gpu/storage.yaml", _set("spec.accessMode", ["ReadWriteMany"]), "spec", "accessMode"),
]


@pytest.mark.parametrize("file, mutate, field, words", NEGATIVE,
                         ids=[f"{n[0]}:{n[2].split('.')[-1]}:{n[3][:24]}" for n in NEGATIVE])
def test_broken_copy_is_rejected_naming_the_field(docs, file, mutate, field, words):
    doc = copy.deepcopy(docs[file])
    mutate(doc.body)
    problems = m.check(doc, None, PINS, None)  # every rule but the CRD schema (tested below, needs the CRDs)
    assert any(f": {field}:" in p and words in p for p in problems), problems


CRD_NEGATIVE = [
    ("gpu/rayjob.yaml", _set(f"{JOB_GPU}.maxReplica", 2), JOB_GPU, "'maxReplica' was unexpected"),
    ("gpu/rayjob.yaml", _set("spec.ttlSecondsAfterFinished", "600"), "spec.ttlSecondsAfterFinished", "is not of type 'integer'"),
    ("gpu/rayservice.yaml", _set("spec.serveConfig", "x"), "spec", "'serveConfig' was unexpected"),
    ("cpu/raycluster.yaml", _set("spec.authOptions", {"mode": "password"}), "spec.authOptions.mode", "is not one of"),
    ("gpu/rayjob.yaml", _set("apiVersion", "ray.io/v1alpha1"), "apiVersion", "expected ray.io/v1"),
]


@needs_crds
@pytest.mark.parametrize("file, mutate, field, words", CRD_NEGATIVE, ids=[n[2] for n in CRD_NEGATIVE])
def test_crd_schema_rejects_broken_copy(docs, file, mutate, field, words):
    doc = copy.deepcopy(docs[file])
    mutate(doc.body)
    problems = m.schema_errors(doc, CRDS)
    assert any(f": {field}:" in p and words in p for p in problems), problems


def test_dockerfile_with_another_ray_is_rejected(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text((K8S / "Dockerfile").read_text().replace("ARG BASE=rayproject/ray:2.60.0-py311",
                                                           "ARG BASE=rayproject/ray:2.59.0-py310"))
    assert m.dockerfile_errors(bad, PINS) == [
        f"{bad}: ARG BASE: rayproject/ray:2.59.0-py310 != rayproject/ray:2.60.0-py311 (the Ray and Python pins)"]


def test_manifest_check_command_exits_nonzero_on_a_broken_folder(tmp_path, capsys):
    (tmp_path / "Dockerfile").write_text((K8S / "Dockerfile").read_text())
    body = yaml.safe_load((K8S / "cpu" / "rayjob.yaml").read_text())
    body["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplicas"] = 5
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(body))
    assert m.main([str(tmp_path), "--crds", str(CRDS)]) == 1
    assert "minReplicas 5 > maxReplicas 1" in capsys.readouterr().out


def test_serve_sync_rewrites_only_the_serve_config():
    """What the lead runs after ``serve build``: the manifests take the new config, keep their cluster values."""
    from sepsis_rl.deploy.serve_sync import sync_text

    ref = {"proxy_location": "EveryNode", "http_options": {"host": "127.0.0.1", "port": 8000},
           "applications": [{"name": "sepsis-rl", "route_prefix": "/", "import_path": "serve.app:build_app",
                             "args": {"agent_dir": "agent", "engine": "transformers", "replicas": 1,
                                      "api_key_env": "SEPSIS_RL_API_KEY"},
                             "deployments": [{"name": "Agent", "max_ongoing_requests": 16}]}]}
    text = (K8S / "gpu" / "rayservice.yaml").read_text()
    new = sync_text(text, ref)
    body = yaml.safe_load(new)
    cfg = yaml.safe_load(body["spec"]["serveConfigV2"])
    assert cfg["proxy_location"] == "EveryNode" and cfg["applications"][0]["deployments"][0]["max_ongoing_requests"] == 16
    assert cfg["http_options"]["host"] == "0.0.0.0" and cfg["applications"][0]["args"]["engine"] == "vllm"
    assert cfg["applications"][0]["args"]["agent_dir"] == "/mnt/runs/gpu-001/agent"
    assert body["spec"]["rayClusterConfig"] == yaml.safe_load(text)["spec"]["rayClusterConfig"]
    assert new.split("serveConfigV2")[0] == text.split("serveConfigV2")[0]  # comments above kept
    assert m.check(m.Doc("gpu/rayservice.yaml", body), None, PINS, ref) == []
