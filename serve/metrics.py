"""``sepsis_rl_serve_*`` metrics on the Ray dashboard / Prometheus (shown there with a ``ray_`` prefix).

Every metric carries ``run_id`` so several served agents (or a canary next to the live one) stay apart.
Metric objects are created in the replica that records them (Ray metrics are per process).
"""

from __future__ import annotations

from ray.util.metrics import Counter, Histogram

LATENCY_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]


class IngressMetrics:
    """Requests by route and status, and their latency (recorded by the HTTP ingress)."""

    def __init__(self, run_id: str):
        self.tags = {"run_id": run_id}
        self.requests = Counter("sepsis_rl_serve_requests", "HTTP requests by route and status code",
                                tag_keys=("route", "status", "run_id"))
        self.latency = Histogram("sepsis_rl_serve_latency_seconds", "end-to-end request latency",
                                 boundaries=LATENCY_BOUNDARIES, tag_keys=("route", "run_id"))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.inc(1, {**self.tags, "route": route, "status": str(status)})
        self.latency.observe(seconds, {**self.tags, "route": route})


class AgentMetrics:
    """Batch sizes, parse failures and fallbacks (recorded by the agent deployment)."""

    def __init__(self, run_id: str):
        self.tags = {"run_id": run_id}
        self.batch_size = Histogram("sepsis_rl_serve_batch_size", "decisions per batched engine call",
                                    boundaries=BATCH_BOUNDARIES, tag_keys=("run_id",))
        self.parse_failures = Counter("sepsis_rl_serve_parse_failures", "unparseable proposals/prescriptions",
                                      tag_keys=("stage", "run_id"))
        self.fallbacks = Counter("sepsis_rl_serve_fallbacks", "decisions whose action came from the fallback",
                                 tag_keys=("run_id",))

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size, self.tags)

    def observe_decision(self, proposal_failure: str, prescription_failure: str) -> None:
        if proposal_failure:
            self.parse_failures.inc(1, {**self.tags, "stage": "proposal"})
        if prescription_failure:
            self.parse_failures.inc(1, {**self.tags, "stage": "prescription"})
            self.fallbacks.inc(1, self.tags)
