"""Offline checks of the Ray cluster launcher configs (``cluster/aws.yaml``, ``cluster/gcp.yaml``).

First the ``ray-schema.json`` shipped in the Ray wheel (what ``ray up`` validates against), then what ``ray up``
would only discover on the cloud: node types that exist, worker bounds that add up, the pinned image, a setup
that installs this project, token auth on every node, and the gpu preset fitting the GPU workers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sepsis_rl.deploy.manifests import Node, Pins, fits, preset_bundles


def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def schema_errors(cfg: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(ray_schema())
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(cfg)]


def bounds_errors(cfg: dict[str, Any]) -> list[str]:
    types = cfg.get("available_node_types") or {}
    out = []
    if cfg.get("head_node_type") not in types:
        out.append(f"head_node_type: {cfg.get('head_node_type')!r} is not in available_node_types")
    total = int(cfg.get("max_workers", 0))
    for name, t in types.items():
        lo, hi = int(t.get("min_workers", 0)), int(t.get("max_workers", total))
        if lo > hi:
            out.append(f"available_node_types.{name}.min_workers: {lo} > max_workers {hi}")
        if hi > total and name != cfg.get("head_node_type"):
            out.append(f"available_node_types.{name}.max_workers: {hi} > the cluster's max_workers {total}")
    if sum(int(t.get("min_workers", 0)) for n, t in types.items() if n != cfg.get("head_node_type")) > total:
        out.append(f"max_workers: {total} is below the sum of min_workers")
    return out


def image_errors(cfg: dict[str, Any], pins: Pins) -> list[str]:
    docker = cfg.get("docker") or {}
    allowed = {pins.base_image, f"{pins.base_image}-gpu"}
    return [f"docker.{k}: {docker[k]!r} is not {pins.base_image}[-gpu] (the Ray and Python pins)"
            for k in ("image", "head_image", "worker_image") if k in docker and docker[k] not in allowed]


def setup_errors(cfg: dict[str, Any]) -> list[str]:
    """The source tree is mounted on every node and pip-installed there."""
    mounts = cfg.get("file_mounts") or {}
    src = [dst for dst, local in mounts.items() if str(local).rstrip("/") in (".", "./")]
    if not src:
        return ["file_mounts: the repository root ('.') is not mounted on the nodes"]
    if not any("pip install" in c and src[0] in c for c in cfg.get("setup_commands") or []):
        return [f"setup_commands: no 'pip install' of {src[0]} (the project would be missing on the nodes)"]
    return []


def auth_errors(cfg: dict[str, Any]) -> list[str]:
    out = []
    if not any(str(dst).endswith(".ray/auth_token") for dst in cfg.get("file_mounts") or {}):
        out.append("file_mounts: ~/.ray/auth_token is not copied to the nodes")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for i, c in enumerate(cfg.get(key) or []):
            if "ray start" in c and "RAY_AUTH_MODE=token" not in c:
                out.append(f"{key}[{i}]: 'ray start' without RAY_AUTH_MODE=token")
    if not any("--autoscaling-config" in c for c in cfg.get("head_start_ray_commands") or []):
        out.append("head_start_ray_commands: the head's 'ray start' lacks --autoscaling-config")
    return out


def fit_errors(cfg: dict[str, Any], preset: str = "gpu") -> list[str]:
    """The preset's bundles fit the nodes at max_workers, the head holds no GPU, and no GPU would sit idle."""
    types = cfg.get("available_node_types") or {}
    head = cfg.get("head_node_type")
    out = []
    if (types.get(head) or {}).get("resources", {}).get("GPU", 0):
        out.append(f"available_node_types.{head}.resources.GPU: the head needs no GPU")
    nodes = []
    for name, t in types.items():
        res = t.get("resources") or {}
        n = 1 if name == head else int(t.get("max_workers", 0))
        nodes += [Node(float(res.get("CPU", 0)), float(res.get("GPU", 0)))] * n
    bundles = preset_bundles(preset)
    need, have = sum(b.gpu for b in bundles), sum(n.gpu for n in nodes)
    if not fits(bundles, nodes):
        out.append(f"available_node_types: the {preset} preset's bundles ({len(bundles)} bundles, {need:g} GPUs) do not fit "
                   f"the nodes at max_workers ({have:g} GPUs)")
    elif have > need:
        out.append(f"available_node_types: {have - need:g} of {have:g} GPUs would sit idle (the {preset} preset uses {need:g})")
    return out


def check(cfg: dict[str, Any], pins: Pins) -> list[str]:
    return schema_errors(cfg) + bounds_errors(cfg) + image_errors(cfg, pins) + setup_errors(cfg) + auth_errors(cfg) \
        + fit_errors(cfg)
