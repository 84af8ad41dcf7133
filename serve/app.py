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
from serve.ingress import INGRESS_CPUS, Ingress
from serve.world_model_deployment import WORLD_MODEL_CPUS, WorldModelDeployment
from sepsis_rl.rollout.engine_choice import resolve_engine


class AppArgs(BaseModel):
    """Arguments of the application (``args:`` in serve/config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    agent_dir: str = Field(description="the pipeline's RUN/agent folder")
    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="auto: vLLM where installed (on CPU or GPU), else transformers")
    engine_cpus: float = Field(1.0, gt=0, description="CPUs each agent replica reserves (its engine's threads)")
    engine_gpus: float = Field(0.0, ge=0, description="GPUs each agent replica reserves (0 on a CPU-only cluster)")
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


def agent_resources(a: AppArgs) -> dict[str, float]:
    """Ray resources of one agent replica: what its engine uses, as the evaluation sizes its engines."""
    res = {"num_cpus": a.engine_cpus}
    if a.engine_gpus > 0:
        res["num_gpus"] = a.engine_gpus
    return res


def fixed_resources() -> dict[str, float]:
    """CPUs the ingress and world-model replicas reserve besides the agent replicas (one each at the start)."""
    return {"CPU": INGRESS_CPUS + WORLD_MODEL_CPUS}


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    # "auto" is decided on the node that builds the app (the driver, or the Serve controller); an explicit
    # engine passes through, so a head node without vLLM can still deploy vLLM replicas onto GPU workers
    engine = resolve_engine(a.engine) if a.engine == "auto" else a.engine
    hi = a.max_replicas or a.replicas
    batch = a.max_batch_size if a.batching else 1
    world = WorldModelDeployment.options(autoscaling_config=_autoscaling(1, max(1, hi // 2), 8)).bind(a.agent_dir)
    agent = AgentDeployment.options(
        autoscaling_config=_autoscaling(a.replicas, hi, max(2, batch)),
        max_ongoing_requests=max(4 * batch, 8), max_queued_requests=a.max_queued_requests,
        ray_actor_options=agent_resources(a),
    ).bind(a.agent_dir, engine, world, batch, a.batch_wait_timeout_s if a.batching else 0.0)
    return Ingress.options(autoscaling_config=_autoscaling(1, hi, 64)).bind(agent, world, a.agent_dir, a.api_key_env,
                                                                             engine)


def missing_resources(a: AppArgs, cluster: dict[str, float]) -> str | None:
    """One line naming what ``cluster`` (``ray.cluster_resources()``) lacks to start ``a.replicas`` agent
    replicas beside the ingress and the world model, or None when they fit. Serve would otherwise wait for
    them forever (the autoscaler logs an unfulfillable request every 35 s; ``/readyz`` never answers)."""
    per = agent_resources(a)
    need = {"CPU": a.replicas * per["num_cpus"] + fixed_resources()["CPU"], "GPU": a.replicas * per.get("num_gpus", 0.0)}
    short = {k: v - cluster.get(k, 0.0) for k, v in need.items() if v > cluster.get(k, 0.0) + 1e-9}
    if not short:
        return None
    each = ", ".join(f"{k.removeprefix('num_').upper()} {v:g}" for k, v in per.items())
    has = ", ".join(f"{k} {cluster.get(k, 0.0):g}" for k in need)
    lacks = ", ".join(f"{k} {v:g}" for k, v in short.items())
    return (f"cannot start {a.replicas} agent replica(s) on the {engine_label(a)} engine: each needs {each} (plus CPU "
            f"{fixed_resources()['CPU']:g} for the ingress and world model); the cluster has {has}: missing {lacks}. "
            "Lower --replicas, --engine-cpus or --engine-gpus, or add nodes")


def engine_label(a: AppArgs) -> str:
    return a.engine if a.engine != "auto" else f"auto ({resolve_engine('auto')})"
