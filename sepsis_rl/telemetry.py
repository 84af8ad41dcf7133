"""The ``run_id`` tag every ``sepsis_rl_*`` dashboard metric carries, so one Grafana board can tell runs apart.

The id comes from ``$SEPSIS_RL_RUN_ID`` (``sepsis-rl submit`` and the k8s manifests set it in the job's runtime env,
which Ray passes to every task and actor of the job) and otherwise from the Ray job id, so local runs are tagged too.
"""

from __future__ import annotations

import os

RUN_ID_ENV = "SEPSIS_RL_RUN_ID"
RUN_ID_TAG = "run_id"


def run_id() -> str:
    rid = os.environ.get(RUN_ID_ENV)
    if rid:
        return rid
    import ray

    if ray.is_initialized():
        return f"job-{ray.get_runtime_context().get_job_id()}"
    return "local"


def run_tags(**tags: str) -> dict[str, str]:
    """Default tags for a metric: the run id plus the caller's own (e.g. ``shard``)."""
    return {RUN_ID_TAG: run_id(), **tags}
