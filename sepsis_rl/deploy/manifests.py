"""Offline checks of the KubeRay manifests in ``k8s/``: what ``kubectl apply`` and the operator would reject, and
what would only fail hours later on the cluster (a bad entrypoint, a preset that does not fit, a wrong image).

Every check returns messages ``"<file>: <Kind> <name>: <field path>: <problem>"``; an empty list means the
document passed. Layers: the pinned KubeRay CRD schemas (objects closed, so a misspelt field is an error, as the
API server's structural pruning would silently drop it), ``kubernetes-validate --strict`` for built-in kinds and
for every pod template, the operator's own rules (from KubeRay's ``validation.go``), Ray Serve's
``ServeDeploySchema``, the project's argument parser, the version pins, storage, and resource fit.

``python -m sepsis_rl.deploy.manifests [k8s/] [--crds ../shared/kuberay-crds]`` prints the problems (exit 1).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import yaml

RAY_KINDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
K8S_VERSION = "1.37.0"
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")  # KubeRay v1.7 rayjob_types.go
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}  # utils/constant.go: cluster names get suffixes
RAY_START_RESOURCES = ("num-cpus", "num-gpus", "memory", "resources")
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
URI = re.compile(r"^[a-z][a-z0-9+.-]*://")
GPU = "nvidia.com/gpu"
# serveConfigV2 may differ from serve/config.yaml only here: where the agent lives and how the cluster runs it
SERVE_ARG_OVERRIDES = ("agent_dir", "engine", "replicas", "engine_cpus", "engine_gpus")
SERVE_HTTP_OVERRIDES = ("host",)
PRESET_ANNOTATION = "sepsis-rl.io/fits-preset"  # a RayCluster declares which preset it must be able to run


@dataclass(frozen=True)
class Pins:
    ray: str
    python: str  # "3.11"
    project: str

    @classmethod
    def from_pyproject(cls, path: Path) -> "Pins":
        meta = tomllib.loads(path.read_text())["project"]
        ray = next(re.match(r"^ray(\[[^\]]*\])?==([\w.]+)$", d).group(2) for d in meta["dependencies"]
                   if re.match(r"^ray(\[[^\]]*\])?==", d))
        py = re.search(r">=\s*(\d+\.\d+)", meta["requires-python"]).group(1)
        return cls(ray=ray, python=py, project=meta["version"])

    @property
    def base_image(self) -> str:
        return f"rayproject/ray:{self.ray}-py{self.python.replace('.', '')}"


@dataclass
class Doc:
    file: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind"))

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name"))

    def err(self, path: str, msg: str) -> str:
        return f"{self.file}: {self.kind} {self.name}: {path}: {msg}"


def load_documents(root: Path) -> list[Doc]:
    docs = []
    for f in sorted(root.rglob("*.yaml")):
        for body in yaml.safe_load_all(f.read_text()):
            if body:
                docs.append(Doc(str(f.relative_to(root.parent) if root.parent in f.parents else f), body))
    return docs


# ------------------------------------------------------------------------------------------------ schemas
def close_objects(schema: Any) -> Any:
    """``additionalProperties: false`` on every object that lists properties (the pinned CRDs' README)."""
    if isinstance(schema, dict):
        out = {k: close_objects(v) for k, v in schema.items()}
        if ("properties" in out and not out.get("x-kubernetes-preserve-unknown-fields")
                and "additionalProperties" not in out):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [close_objects(v) for v in schema]
    return schema


@lru_cache(maxsize=8)
def crd_schema(crd_dir: str, kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((Path(crd_dir) / RAY_KINDS[kind]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return close_objects(version["schema"]["openAPIV3Schema"])


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def schema_errors(doc: Doc, crd_dir: Path) -> list[str]:
    import jsonschema

    if doc.body.get("apiVersion") != "ray.io/v1":
        return [doc.err("apiVersion", f"expected ray.io/v1, got {doc.body.get('apiVersion')!r}")]
    validator = jsonschema.Draft202012Validator(crd_schema(str(crd_dir), doc.kind))
    return [doc.err(_path(e.absolute_path), e.message) for e in validator.iter_errors(doc.body)]


def _k8s_problems(body: dict[str, Any]) -> list[tuple[str, str]]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(body, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [(_path(e.absolute_path), e.message)]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [("kind", str(e))]
    return []


def builtin_errors(doc: Doc) -> list[str]:
    """A built-in kind, strictly (unknown fields are errors), against the Kubernetes version we target."""
    return [doc.err(path, msg) for path, msg in _k8s_problems(doc.body)]


def pod_template_errors(doc: Doc) -> list[str]:
    """Each group's pod template as a built-in ``PodTemplate`` (the strict Kubernetes schema, not the CRD copy)."""
    out = []
    for path, group in groups(doc):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                   "template": group.get("template", {})}
        out += [doc.err(f"{path}.{sub}", msg) for sub, msg in _k8s_problems(wrapped)]
    return out


# ------------------------------------------------------------------------------------------- cluster shape
def cluster_spec(doc: Doc) -> tuple[str, dict[str, Any]]:
    spec = doc.body.get("spec") or {}
    if doc.kind == "RayJob":
        return "spec.rayClusterSpec", spec.get("rayClusterSpec") or {}
    if doc.kind == "RayService":
        return "spec.rayClusterConfig", spec.get("rayClusterConfig") or {}
    return "spec", spec


def groups(doc: Doc) -> Iterator[tuple[str, dict[str, Any]]]:
    base, spec = cluster_spec(doc)
    yield f"{base}.headGroupSpec", spec.get("headGroupSpec") or {}
    for i, g in enumerate(spec.get("workerGroupSpecs") or []):
        yield f"{base}.workerGroupSpecs[{i}]", g


def containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return ((group.get("template") or {}).get("spec") or {}).get("containers") or []


def quantity(value: Any) -> float:
    s = str(value)
    if s.endswith("m"):
        return float(s[:-1]) / 1000
    return float(s)


@dataclass(frozen=True)
class Node:
    cpu: float
    gpu: float


def node_shape(group: dict[str, Any]) -> Node:
    """What Ray sees on one pod: rayStartParams or the group's ``resources`` win, else the Ray container's limits."""
    params = {**(group.get("rayStartParams") or {}), **(group.get("resources") or {})}
    ray_c = (containers(group) or [{}])[0]
    limits = (ray_c.get("resources") or {}).get("limits") or {}
    cpu = params.get("num-cpus", params.get("CPU", limits.get("cpu", 0)))
    gpu = params.get("num-gpus", params.get("GPU", limits.get(GPU, 0)))
    return Node(quantity(cpu), quantity(gpu))


# ----------------------------------------------------------------------------------------- operator rules
def operator_errors(doc: Doc) -> list[str]:
    """KubeRay's own validation (validation.go), which the CRD schema cannot express."""
    out = []
    name = doc.name
    if len(name) > MAX_NAME.get(doc.kind, 63):
        out.append(doc.err("metadata.name", f"longer than {MAX_NAME.get(doc.kind, 63)} characters"))
    if not DNS1035.match(name) or len(name) > 63:
        out.append(doc.err("metadata.name", "must be a DNS-1035 label (a-z, 0-9, '-', starting with a letter)"))
    for path, g in groups(doc):
        label = g.get("groupName", "head")
        if not containers(g):
            out.append(doc.err(f"{path}.template.spec.containers", "needs at least one container"))
        params = g.get("rayStartParams") or {}
        if any(params.get(k) for k in RAY_START_RESOURCES) and g.get("resources"):
            out.append(doc.err(f"{path}.resources", f"resources set twice for {label} (rayStartParams and resources)"))
        if "labels" in params:
            out.append(doc.err(f"{path}.rayStartParams.labels", "not supported; use the group's labels field"))
        if "groupName" in g:
            lo, hi, n = g.get("minReplicas"), g.get("maxReplicas"), g.get("replicas")
            if lo is not None and hi is not None and lo > hi:
                out.append(doc.err(f"{path}.minReplicas", f"minReplicas {lo} > maxReplicas {hi}"))
            if n is not None and lo is not None and hi is not None and not lo <= n <= hi:
                out.append(doc.err(f"{path}.replicas", f"replicas {n} outside [minReplicas {lo}, maxReplicas {hi}]"))
    names = [g.get("groupName") for _, g in list(groups(doc))[1:]]
    if len(set(names)) != len(names):
        out.append(doc.err(f"{cluster_spec(doc)[0]}.workerGroupSpecs", f"duplicate groupName in {names}"))
    base, spec = cluster_spec(doc)
    if (spec.get("authOptions") or {}).get("mode") != "token":
        out.append(doc.err(f"{base}.authOptions.mode", "must be 'token' (Ray's token auth stays on for clusters)"))
    if doc.kind == "RayJob":
        out += _rayjob_rules(doc)
    return out


def _rayjob_rules(doc: Doc) -> list[str]:
    spec, out = doc.body.get("spec") or {}, []
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        out.append(doc.err("spec.submissionMode", f"{mode!r} is not one of {', '.join(SUBMISSION_MODES)}"))
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if ttl < 0:
        out.append(doc.err("spec.ttlSecondsAfterFinished", "must be >= 0"))
    if ttl > 0 and not spec.get("shutdownAfterJobFinishes"):
        out.append(doc.err("spec.ttlSecondsAfterFinished", "needs shutdownAfterJobFinishes: true"))
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        out.append(doc.err("spec.suspend", "needs shutdownAfterJobFinishes: true"))
    if "activeDeadlineSeconds" in spec and spec["activeDeadlineSeconds"] <= 0:
        out.append(doc.err("spec.activeDeadlineSeconds", "must be > 0"))
    if not spec.get("rayClusterSpec") and not spec.get("clusterSelector"):
        out.append(doc.err("spec.rayClusterSpec", "one of rayClusterSpec or clusterSelector must be set"))
    if mode != "InteractiveMode" and not spec.get("entrypoint"):
        out.append(doc.err("spec.entrypoint", f"required in {mode}"))
    try:
        env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
        if not isinstance(env, dict):
            out.append(doc.err("spec.runtimeEnvYAML", "must be a YAML mapping"))
        else:
            from ray.runtime_env import RuntimeEnv

            RuntimeEnv(**env)
    except yaml.YAMLError as e:
        out.append(doc.err("spec.runtimeEnvYAML", f"not valid YAML: {str(e).splitlines()[0]}"))
    except (TypeError, ValueError) as e:
        out.append(doc.err("spec.runtimeEnvYAML", f"not a valid Ray runtime env: {e}"))
    return out


# ------------------------------------------------------------------------------------------- entrypoints
def entrypoint_errors(doc: Doc) -> list[str]:
    """The RayJob runs a real ``sepsis-rl`` command with options the CLI accepts, writing to shared storage."""
    from sepsis_rl.deploy.submit import SubmitError, check_entrypoint

    if doc.kind != "RayJob":
        return []
    try:
        parsed = check_entrypoint(str((doc.body.get("spec") or {}).get("entrypoint", "")))
    except SubmitError as e:
        return [doc.err("spec.entrypoint", str(e).removeprefix("entrypoint: "))]
    return [doc.err("spec.entrypoint", m) for a in parsed if getattr(a, "out", None)
            for m in storage_problems(doc, a.out, "--out")]


def storage_problems(doc: Doc, location: str, what: str) -> list[str]:
    """A run folder is a URI or lies on a PersistentVolumeClaim mounted in the head and in every worker group."""
    if URI.match(location):
        return []
    problems = []
    for path, g in groups(doc):
        pod = (g.get("template") or {}).get("spec") or {}
        claims = {v["name"] for v in pod.get("volumes") or [] if "persistentVolumeClaim" in v}
        mounts = [m for m in (containers(g) or [{}])[0].get("volumeMounts") or [] if m.get("name") in claims]
        if not any(location == m["mountPath"] or location.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts):
            problems.append(f"{what} {location} is not on a PersistentVolumeClaim mounted in {path} (nor a URI)")
    return problems


# ------------------------------------------------------------------------------------------------ serving
def serve_config(doc: Doc) -> dict[str, Any]:
    return yaml.safe_load((doc.body.get("spec") or {}).get("serveConfigV2") or "") or {}


def for_cluster(reference: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    """``serve/config.yaml`` with the cluster's own values (SERVE_*_OVERRIDES) taken from ``cluster``."""
    out = copy.deepcopy(reference)
    if "http_options" in cluster:
        http = out.setdefault("http_options", {})
        for k in SERVE_HTTP_OVERRIDES:
            if k in cluster["http_options"]:
                http[k] = cluster["http_options"][k]
    theirs = {a.get("name"): a for a in cluster.get("applications") or []}
    for app in out.get("applications") or []:
        args = (theirs.get(app.get("name")) or {}).get("args") or {}
        for k in SERVE_ARG_OVERRIDES:
            if k in args:
                app.setdefault("args", {})[k] = args[k]
    return out


def unknown_keys(model: Any, data: Any, prefix: str = "") -> list[str]:
    """Keys a pydantic model does not declare, recursively: ``ServeDeploySchema`` itself ignores them silently."""
    import typing

    from pydantic import BaseModel

    def models_in(annotation: Any) -> list[Any]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for a in typing.get_args(annotation) for m in models_in(a)]

    if not isinstance(data, dict):
        return []
    out = []
    fields = model.model_fields
    by_alias = {(f.alias or k): f for k, f in fields.items()}
    for key, value in data.items():
        field = by_alias.get(key) or fields.get(key)
        path = f"{prefix}{key}"
        if field is None:
            out.append(path)
            continue
        for sub in models_in(field.annotation)[:1]:
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                out += unknown_keys(sub, item, f"{path}[{i}]." if isinstance(value, list) else f"{path}.")
    return out


def serve_errors(doc: Doc, reference: dict[str, Any] | None) -> list[str]:
    """Ray Serve accepts the config; it is the committed serve/config.yaml (where that exists); its agent is on storage."""
    if doc.kind != "RayService":
        return []
    from ray.serve.schema import ServeDeploySchema

    try:
        cfg = serve_config(doc)
        ServeDeploySchema.model_validate(cfg)
    except yaml.YAMLError as e:
        return [doc.err("spec.serveConfigV2", f"not valid YAML: {str(e).splitlines()[0]}")]
    except Exception as e:  # pydantic's ValidationError (v1 or v2, depending on Ray's compat layer)
        return [doc.err("spec.serveConfigV2", f"rejected by ServeDeploySchema: {' '.join(str(e).split())[:300]}")]
    out = [doc.err(f"spec.serveConfigV2.{path}", "unknown field (Ray Serve would ignore it)")
           for path in unknown_keys(ServeDeploySchema, cfg)]
    for i, app in enumerate(cfg.get("applications") or []):
        if not IMPORT_PATH.match(str(app.get("import_path", ""))):
            out.append(doc.err(f"spec.serveConfigV2.applications[{i}].import_path",
                               f"{app.get('import_path')!r} is not 'package.module:attribute'"))
    if reference is not None and for_cluster(reference, cfg) != cfg:
        out.append(doc.err("spec.serveConfigV2", "differs from serve/config.yaml beyond the cluster's values "
                           f"(args {', '.join(SERVE_ARG_OVERRIDES)}; http_options.host): copy it from there"))
    for i, app in enumerate(cfg.get("applications") or []):
        agent_dir = (app.get("args") or {}).get("agent_dir")
        if agent_dir:
            out += [doc.err(f"spec.serveConfigV2.applications[{i}].args.agent_dir", m)
                    for m in storage_problems(doc, str(agent_dir), "agent_dir")]
    return out


# ------------------------------------------------------------------------------------------ images, pins
def image_errors(doc: Doc, pins: Pins) -> list[str]:
    out = []
    base, spec = cluster_spec(doc)
    if str(spec.get("rayVersion")) != pins.ray:
        out.append(doc.err(f"{base}.rayVersion", f"{spec.get('rayVersion')!r} != the Ray pin {pins.ray}"))
    for path, g in groups(doc):
        c = (containers(g) or [{}])[0]
        gpu_pod = quantity(((c.get("resources") or {}).get("limits") or {}).get(GPU, 0)) > 0
        image = str(c.get("image", ""))
        want = re.compile(rf"^([^:]+/)?sepsis-rl:{re.escape(pins.project)}(-gpu)?$")
        m = want.match(image)
        if not m:
            out.append(doc.err(f"{path}.template.spec.containers[0].image",
                               f"{image!r} is not the project image sepsis-rl:{pins.project}[-gpu] (k8s/Dockerfile)"))
        elif gpu_pod and not m.group(2):
            out.append(doc.err(f"{path}.template.spec.containers[0].image", f"{image!r}: a GPU pod needs the -gpu image"))
    return out


def dockerfile_errors(dockerfile: Path, pins: Pins) -> list[str]:
    """The image is built on the official Ray image whose Ray and Python versions are the project's pins."""
    text = dockerfile.read_text()
    m = re.search(r"^ARG BASE=(\S+)$", text, re.M)
    if not m:
        return [f"{dockerfile}: ARG BASE: missing"]
    out = []
    if m.group(1) != pins.base_image:
        out.append(f"{dockerfile}: ARG BASE: {m.group(1)} != {pins.base_image} (the Ray and Python pins)")
    for gpu_base in re.findall(r"BASE=(rayproject/ray:\S+-gpu)", text):
        if gpu_base != f"{pins.base_image}-gpu":
            out.append(f"{dockerfile}: GPU BASE: {gpu_base} != {pins.base_image}-gpu")
    return out


# --------------------------------------------------------------------------------------- resource fit
def preset_bundles(preset: str, overrides: list[str] | None = None) -> list[Node]:
    """The Ray resources a preset asks for at its peak (RL stage): learner ranks, rollout workers, simulator shards."""
    from sepsis_rl.curriculum.cli import _overrides
    from sepsis_rl.curriculum.config import load_config

    cfg = load_config(preset, _overrides(overrides or []))
    cl, ro = cfg.cluster, cfg.rollout
    return ([Node(cl.learner_cpus, cl.learner_gpus)] * cl.learner_workers
            + [Node(ro.cpus_per_worker, ro.gpus_per_worker)] * ro.workers
            + [Node(cl.simulator_cpus, 0.0)] * cl.simulator_shards)


def cluster_nodes(doc: Doc) -> list[Node]:
    """The head and every worker pod at maxReplicas."""
    nodes = []
    for path, g in groups(doc):
        n = 1 if path.endswith("headGroupSpec") else int(g.get("maxReplicas", g.get("replicas", 0)))
        nodes += [node_shape(g)] * n
    return nodes


def fits(bundles: list[Node], nodes: list[Node]) -> bool:
    """First-fit decreasing (GPU, then CPU): what Ray's scheduler can at least achieve for PACK/SPREAD groups."""
    free = [[n.cpu, n.gpu] for n in nodes]
    for b in sorted(bundles, key=lambda b: (b.gpu, b.cpu), reverse=True):
        slot = next((f for f in free if f[0] + 1e-9 >= b.cpu and f[1] + 1e-9 >= b.gpu), None)
        if slot is None:
            return False
        slot[0] -= b.cpu
        slot[1] -= b.gpu
    return True


def _preset_of(doc: Doc) -> tuple[str, list[str]] | None:
    from sepsis_rl.deploy.submit import SubmitError, check_entrypoint

    if doc.kind == "RayJob":
        try:
            parsed = check_entrypoint(str((doc.body.get("spec") or {}).get("entrypoint", "")))
        except SubmitError:
            return None  # reported by entrypoint_errors
        for a in parsed:
            if a.command in ("pipeline", "train"):
                return (a.config or getattr(a, "preset", None) or "cpu"), a.set
        return None
    preset = ((doc.body.get("metadata") or {}).get("annotations") or {}).get(PRESET_ANNOTATION)
    return (preset, []) if preset else None


def resource_errors(doc: Doc) -> list[str]:
    """GPU pods are well-formed and tolerated; the preset's placement-group bundles fit with no GPU left idle."""
    out = []
    for path, g in groups(doc):
        c = (containers(g) or [{}])[0]
        res = c.get("resources") or {}
        lim, req = (res.get("limits") or {}).get(GPU), (res.get("requests") or {}).get(GPU)
        if req is not None and lim != req:
            out.append(doc.err(f"{path}.template.spec.containers[0].resources.limits.{GPU}",
                               f"limits ({lim}) must equal requests ({req}) for GPUs"))
        if lim is not None and quantity(lim) > 0:
            if path.endswith("headGroupSpec"):
                out.append(doc.err(f"{path}.template.spec.containers[0].resources.limits.{GPU}",
                                   "the head needs no GPU (it runs the driver only)"))
            tol = ((g.get("template") or {}).get("spec") or {}).get("tolerations") or []
            if not any(t.get("key") == GPU for t in tol):
                out.append(doc.err(f"{path}.template.spec.tolerations", f"a GPU group needs a {GPU} toleration"))
    if doc.kind == "RayJob" and quantity((doc.body.get("spec") or {}).get("entrypointNumGpus", 0)) > 0:
        out.append(doc.err("spec.entrypointNumGpus", "the driver needs no GPU (heavy work runs in resourced actors)"))
    if doc.kind == "RayService":
        out += _serve_gpu_errors(doc)
    found = _preset_of(doc)
    if found:
        out += _fit_errors(doc, *found)
    return out


def _fit_errors(doc: Doc, preset: str, overrides: list[str]) -> list[str]:
    base, _ = cluster_spec(doc)
    bundles, nodes = preset_bundles(preset, overrides), cluster_nodes(doc)
    need = sum(b.gpu for b in bundles)
    have = sum(n.gpu for n in nodes)
    shape = ", ".join(sorted({f"{bundles.count(b)} x {{CPU: {b.cpu:g}, GPU: {b.gpu:g}}}" for b in bundles}))
    if not fits(bundles, nodes):
        return [doc.err(f"{base}.workerGroupSpecs", f"the {preset} preset's bundles ({shape}) do not fit the pods "
                        f"at maxReplicas ({have:g} GPUs, {sum(n.cpu for n in nodes):g} CPUs)")]
    if have > need:
        return [doc.err(f"{base}.workerGroupSpecs", f"{have - need:g} of {have:g} GPUs would sit idle: the {preset} "
                        f"preset uses {need:g} ({shape})")]
    return []


def _serve_gpu_errors(doc: Doc) -> list[str]:
    base, _ = cluster_spec(doc)
    gpus = sum(n.gpu for n in cluster_nodes(doc))
    out = []
    for i, app in enumerate(serve_config(doc).get("applications") or []):
        args = app.get("args") or {}
        most = max(int(args.get("replicas", 1)), int(args.get("max_replicas", 1)))
        if args.get("engine") == "vllm" and gpus < most:
            out.append(doc.err(f"{base}.workerGroupSpecs", f"application {i} runs up to {most} vLLM "
                               f"replicas but the cluster has {gpus:g} GPUs at maxReplicas"))
    return out


# ---------------------------------------------------------------------------------------------- all checks
def check(doc: Doc, crd_dir: Path | None, pins: Pins, serve_reference: dict[str, Any] | None) -> list[str]:
    if doc.kind not in RAY_KINDS:
        return builtin_errors(doc)
    out = schema_errors(doc, crd_dir) if crd_dir is not None else []
    out += pod_template_errors(doc)
    out += operator_errors(doc)
    out += entrypoint_errors(doc)
    out += serve_errors(doc, serve_reference)
    out += image_errors(doc, pins)
    out += resource_errors(doc)
    return out


def default_crd_dir(repo_root: Path) -> str:
    """The pinned CRDs lie beside the clone (``../shared/kuberay-crds``); ``$SEPSIS_RL_KUBERAY_CRDS`` overrides."""
    return os.environ.get("SEPSIS_RL_KUBERAY_CRDS") or str(repo_root.parent / "shared" / "kuberay-crds")


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(prog="python -m sepsis_rl.deploy.manifests", description=__doc__.split("\n")[0])
    p.add_argument("k8s", nargs="?", default=str(root / "k8s"))
    p.add_argument("--crds", default=default_crd_dir(root))
    args = p.parse_args(argv)
    pins = Pins.from_pyproject(root / "pyproject.toml")
    crds = Path(args.crds) if Path(args.crds).is_dir() else None
    ref_path = root / "serve" / "config.yaml"
    ref = yaml.safe_load(ref_path.read_text()) if ref_path.is_file() else None
    problems = dockerfile_errors(Path(args.k8s) / "Dockerfile", pins)
    for doc in load_documents(Path(args.k8s)):
        problems += check(doc, crds, pins, ref)
    print("\n".join(problems) or f"ok ({'with' if crds else 'WITHOUT'} the KubeRay CRD schemas)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
