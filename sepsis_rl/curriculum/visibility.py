"""At pipeline start: is the run folder the same folder on every node that may write to it?

A learner rank, rollout worker or simulator shard on a worker node that writes to a "run directory" on
its own disk loses its output silently (the driver never sees it). So before any stage runs, the driver
writes a token into ``RUN_DIR/.probe/<id>/``, and one zero-CPU task pinned to each alive node
(``NodeAffinitySchedulingStrategy``) reads it back and writes its own file; the driver then reads every
node's file. A node that cannot see the driver's token, or whose file the driver cannot see, stops the run
with one line naming the node and the path. One node that is the driver's own needs no probe.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sepsis_rl import storage

log = logging.getLogger(__name__)


class RunDirNotSharedError(RuntimeError):
    """The run folder is not one folder for every node."""


def _probe(location: str, node_id: str, token: str) -> bool:
    """On one node: does it see the driver's token? Then leave its own file for the driver to read."""
    seen = storage.exists(storage.join(location, "driver")) and storage.read_text(storage.join(location, "driver")) == token
    storage.write_text(storage.join(location, node_id), token)
    return seen


def _message(run_dir: str, node: dict[str, Any]) -> str:
    return (f"run directory {run_dir} is not shared with node {node['NodeID']} ({node['NodeManagerAddress']}): "
            "use a shared filesystem or an s3:// / gs:// URI")


def check_run_dir_visible(run_dir: str, timeout_s: float = 120.0) -> int:
    """Probe every alive node; RunDirNotSharedError for the first one that does not share ``run_dir``.
    Returns the number of nodes probed."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    here = ray.get_runtime_context().get_node_id()
    if len(nodes) == 1 and nodes[0]["NodeID"] == here:
        return 0
    token = uuid.uuid4().hex
    where = storage.join(run_dir, ".probe", token)
    storage.write_text(storage.join(where, "driver"), token)
    probe = ray.remote(_probe)
    try:
        calls = {n["NodeID"]: probe.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(where, n["NodeID"], token) for n in nodes}
        seen = dict(zip(calls, ray.get(list(calls.values()), timeout=timeout_s)))
        for n in nodes:
            f = storage.join(where, n["NodeID"])
            if not seen[n["NodeID"]] or not storage.exists(f) or storage.read_text(f) != token:
                raise RunDirNotSharedError(_message(run_dir, n))
    finally:
        storage.delete(storage.join(run_dir, ".probe"))
    log.info("run directory %s is visible from all %d nodes", run_dir, len(nodes))
    return len(nodes)
