"""Start or join Ray: a cluster in ``RAY_ADDRESS`` as it is configured, a local one bound to loopback only.

A local Ray started by plain ``ray.init`` on Linux advertises the machine's network address, and its GCS,
raylet, object manager, every worker's gRPC server and the dashboard agent listen on all interfaces,
unauthenticated: anyone on the network could submit code. A local run needs none of that, so it binds
everything to 127.0.0.1. Ray resolves ``_node_ip_address="127.0.0.1"`` back to the network address
unless its single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the mode Ray itself uses on
laptops) is on; with it, every Ray process of this session listens on loopback only. Cluster runs
(``RAY_ADDRESS`` set: ``ray job submit``, a RayJob) join as configured, with Ray's token authentication.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_ray(num_cpus: int, dashboard: bool = False, **kwargs: Any) -> bool:
    """Join ``RAY_ADDRESS``, or start a local loopback-only Ray; True if this call initialised Ray."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True, **kwargs)
        log.info("joined the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        return True
    os.environ[SINGLE_MACHINE_ENV] = "0"  # inherited by the GCS, raylet and workers started below
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import; this process imported Ray before the line above
    kwargs.setdefault("log_to_driver", False)
    ray.init(num_cpus=num_cpus, include_dashboard=dashboard, _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK, **kwargs)
    log.info("started a local Ray bound to %s only (GCS, raylet, workers%s); set RAY_ADDRESS to join a cluster",
             LOOPBACK, ", dashboard" if dashboard else "")
    return True
