"""The Serve application builder: ``serve.app:build_app`` (what ``serve deploy`` and the RayService run).

Three deployments that scale independently: the HTTP ingress (light), the agent (one engine per
replica, batches), the world model (cheap, batched tool calls). Nothing is read from disk here, so the
application can be built (``sepsis-rl serve build``) on a machine that does not hold the agent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from serve.agent_deployment import AgentDeployment
from serve.ingress import Ingress
from serve.world_model_deployment import WorldModelDeployment


class AppArgs(BaseModel):
    """Arguments of the application (``args:`` in serve/config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    agent_dir: str = Field(description="the pipeline's RUN/agent folder")
    engine: Literal["transformers", "vllm"] = "transformers"
    replicas: int = Field(1, ge=1, description="agent replicas to start with (and the autoscaling minimum)")
    max_replicas: int | None = Field(None, ge=1, description="autoscaling maximum of the agent (default: replicas)")
    api_key_env: str | None = Field(None, description="environment variable holding the bearer token")
    batching: bool = True
    max_batch_size: int = Field(16, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.02, ge=0.0, le=1.0)
    max_queued_requests: int = Field(256, ge=1, description="requests an agent replica queues beyond its ongoing "
                                     "ones; past that the API answers 503 with Retry-After")


def _autoscaling(lo: int, hi: int, target: float) -> dict[str, Any]:
    return {"min_replicas": lo, "initial_replicas": lo, "max_replicas": max(lo, hi),
            "target_ongoing_requests": target, "upscale_delay_s": 10, "downscale_delay_s": 120}


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    hi = a.max_replicas or a.replicas
    batch = a.max_batch_size if a.batching else 1
    agent_resources = {"num_cpus": 1, "num_gpus": 1} if a.engine == "vllm" else {"num_cpus": 0.5}
    world = WorldModelDeployment.options(autoscaling_config=_autoscaling(1, max(1, hi // 2), 8)).bind(a.agent_dir)
    agent = AgentDeployment.options(
        autoscaling_config=_autoscaling(a.replicas, hi, max(2, batch)),
        max_ongoing_requests=max(4 * batch, 8), max_queued_requests=a.max_queued_requests,
        ray_actor_options=agent_resources,
    ).bind(a.agent_dir, a.engine, world, batch, a.batch_wait_timeout_s if a.batching else 0.0)
    return Ingress.options(autoscaling_config=_autoscaling(1, hi, 64)).bind(agent, world, a.agent_dir, a.api_key_env)
