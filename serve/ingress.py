"""The HTTP ingress (FastAPI on Ray Serve): routes, bearer-token auth, body limit, errors, metrics.

Every request goes through :meth:`Ingress._run`, which is the one place that decides a status code:
bad input -> 4xx with an OpenAI-style body naming the field, overload -> 503 with ``Retry-After``,
anything else that breaks (an engine failure) -> 500 with the same body shape; the replica keeps
serving. Validation happens here, before any engine time is spent.
"""

# No `from __future__ import annotations` here: FastAPI reads the route handlers' annotations to tell a
# `Request` from a query parameter, and how it resolves string annotations of Serve-wrapped methods changed
# across FastAPI releases (0.165 took `request` for a required query parameter: every route answered 422).
# Real annotation objects mean the same thing to every FastAPI version.
import asyncio
import hmac
import json
import logging
import os
import time
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from serve.agent_deployment import DecisionInput
from serve.agent_dir import load_agent_dir
from serve.metrics import IngressMetrics
from serve.schemas import Recommendation, RecommendRequest, SimulateRequest, error_body
from serve.validation import HistoryValidator, InputError, feature_range, json_range
from sepsis_rl.cohort.spec import N_ACTIONS, N_BINS

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000
MAX_HISTORY = 64  # 64 four-hour steps = 10.7 days; the model reads its last `history_window` steps
RETRY_AFTER_S = 2
# A replica that dies mid-request (killed, node lost, OOM) fails the call with an actor error that is not the
# request's fault; requests are idempotent (a seed makes sampling deterministic), so the ingress sends the same
# call again, to whichever replica the router picks, a few times with a short back-off.
REPLICA_RETRIES = 4
REPLICA_RETRY_BACKOFF_S = 0.5
REPLICA_DEATH = (RayActorError, ReplicaUnavailableError)


async def call_with_replica_retry(call: Callable[[], Awaitable[Any]], route: str, retries: int = REPLICA_RETRIES,
                                  backoff_s: float = REPLICA_RETRY_BACKOFF_S) -> Any:
    """``await call()``, again after a replica's death (never after the request's own failure)."""
    for attempt in range(retries + 1):
        try:
            return await call()
        except REPLICA_DEATH as e:
            if attempt == retries:
                raise
            log.warning("%s: replica died mid-request (%s); retrying (%d of %d)", route, type(e).__name__,
                        attempt + 1, retries)
            await asyncio.sleep(backoff_s * (attempt + 1))
    raise AssertionError("unreachable")

app = FastAPI(title="sepsis-rl agent", description="Recommendations of the trained sepsis agent and its world model.")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}


def _pydantic_error(e: ValidationError) -> InputError:
    err = e.errors()[0]
    param = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"]).replace(".[", "[")
    return InputError(f"{param or 'body'}: {err['msg']}", param or None, err["type"])


INGRESS_CPUS = 0.1


@serve.deployment(
    max_ongoing_requests=256,  # the ingress only validates and awaits; the agent deployment bounds the work
    health_check_period_s=10, graceful_shutdown_timeout_s=60,
    ray_actor_options={"num_cpus": INGRESS_CPUS},
)
@serve.ingress(app)
class Ingress:
    def __init__(self, agent: Any, world_model: Any, agent_dir: str, api_key_env: str | None = None,
                 engine: str = "transformers"):
        self.agent, self.world_model, self.engine = agent, world_model, engine
        self.dir = load_agent_dir(agent_dir)
        self.validator = HistoryValidator(self.dir.spec, self.dir.medians, MAX_HISTORY)
        self.metrics = IngressMetrics(self.dir.run_id)
        self.api_key: str | None = None
        if api_key_env:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise RuntimeError(f"api_key_env is {api_key_env!r} but that environment variable is empty or unset")

    # ------------------------------------------------------------------------------------- plumbing
    async def _run(self, route: str, request: Request, handler: Callable[[], Awaitable[Any]], auth: bool = True) -> JSONResponse:
        t0 = time.perf_counter()
        try:
            if auth:
                self._authorize(request)
            response = JSONResponse(await handler())
        except ApiError as e:
            response = JSONResponse(error_body(e.message, e.type, e.code, e.param), e.status, headers=e.headers)
        except InputError as e:
            response = JSONResponse(error_body(e.message, "invalid_request_error", e.code, e.param), 422)
        except (BackPressureError, DeploymentUnavailableError) as e:
            response = JSONResponse(error_body(f"the service is overloaded, retry later ({type(e).__name__})",
                                               "overloaded_error", "overloaded"), 503,
                                    headers={"Retry-After": str(RETRY_AFTER_S)})
        except Exception as e:  # an engine or world-model failure: the request fails, the replica stays up
            log.exception("request to %s failed", route)
            response = JSONResponse(error_body(f"internal error while answering: {type(e).__name__}: {str(e)[:300]}",
                                               "server_error", "internal_error"), 500)
        self.metrics.observe(route, response.status_code, time.perf_counter() - t0)
        return response

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or invalid bearer token (send 'Authorization: Bearer <key>')",
                           "authentication_error", "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise ApiError(413, f"body of {declared} bytes exceeds the limit of {MAX_BODY_BYTES}",
                           "invalid_request_error", "body_too_large")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise ApiError(413, f"body exceeds the limit of {MAX_BODY_BYTES} bytes", "invalid_request_error",
                               "body_too_large")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"body is not valid JSON: {e}", "invalid_request_error", "invalid_json") from e
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise _pydantic_error(e) from e

    # --------------------------------------------------------------------------------------- routes
    @app.get("/healthz")
    async def healthz(self, request: Request) -> JSONResponse:
        return await self._run("/healthz", request, self._healthz, auth=False)

    async def _healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self, request: Request) -> JSONResponse:
        return await self._run("/readyz", request, self._readyz)

    async def _readyz(self) -> dict[str, Any]:
        try:
            engine = await self.agent.ready.remote()
            world = await self.world_model.ready.remote()
        except Exception as e:
            raise ApiError(503, f"not ready: {type(e).__name__}", "unavailable_error", "not_ready",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from e
        return {"ready": bool(engine and world), "engine": bool(engine), "world_model": bool(world)}

    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        return await self._run("/v1/models", request, self._models)

    async def _models(self) -> dict[str, Any]:
        s = self.dir.settings
        return {"object": "list", "data": [
            {"id": self.dir.agent_name, "object": "model", "owned_by": "sepsis-rl", "kind": "agent",
             "candidates": s.k, "horizon": s.horizon, "temperature": s.temperature, "engine": self.engine,
             "prompt_style": s.prompt_style},
            {"id": self.dir.world_model_name, "object": "model", "owned_by": "sepsis-rl", "kind": "world_model",
             "history_window": self.dir.window},
        ]}

    @app.get("/v1/schema")
    async def schema(self, request: Request) -> JSONResponse:
        return await self._run("/v1/schema", request, self._schema)

    async def _schema(self) -> dict[str, Any]:
        spec = self.dir.spec
        features = []
        for f, median in zip(spec.features, self.dir.medians):
            rng = feature_range(spec, f.name)
            features.append({"name": f.name, "unit": f.unit, "kind": f.kind, "static": f.static,
                             "range": json_range(rng),
                             "normal": [f.normal_low, f.normal_high],
                             "median": round(median, 4)})
        return {"features": features, "actions": [self._action(a) for a in range(N_ACTIONS)],
                "history_window": self.dir.window, "max_history": MAX_HISTORY,
                "imputation": {"carry_forward": True, "medians": self.dir.medians_source}}

    def _action(self, a: int) -> dict[str, Any]:
        f, v = divmod(a, N_BINS)
        return {"index": a, "fluid_bin": f, "vaso_bin": v, "fluid_ml_4h": float(self.dir.spec.fluid.representative[f]),
                "vaso_mcg_kg_min": float(self.dir.spec.vaso.representative[v])}

    @app.post("/v1/recommend")
    async def recommend(self, request: Request) -> JSONResponse:
        return await self._run("/v1/recommend", request, lambda: self._recommend(request))

    async def _recommend(self, request: Request) -> dict[str, Any]:
        req: RecommendRequest = await self._body(request, RecommendRequest)
        hist = self.validator.validate(req.patient.history)
        o, s = req.options, self.dir.settings
        last = req.patient.last_action.index if req.patient.last_action else None
        item = DecisionInput(hist.states, last, o.candidates or s.k, o.horizon or s.horizon,
                             s.temperature if o.temperature is None else o.temperature, o.simulate, o.seed,
                             hist.imputed_features)
        answer = await call_with_replica_retry(lambda: self.agent.recommend.remote(item), "/v1/recommend")
        answer.update(imputed_features=hist.imputed_features,
                      model={"agent": self.dir.agent_name, "world_model": self.dir.world_model_name})
        return Recommendation(**answer).model_dump(exclude_none=False)

    @app.post("/v1/simulate")
    async def simulate(self, request: Request) -> JSONResponse:
        return await self._run("/v1/simulate", request, lambda: self._simulate(request))

    async def _simulate(self, request: Request) -> dict[str, Any]:
        req: SimulateRequest = await self._body(request, SimulateRequest)
        hist = self.validator.validate(req.patient.history)
        rows = await call_with_replica_retry(
            lambda: self.world_model.what_if.remote(hist.states, list(req.actions), req.horizon), "/v1/simulate")
        return {"horizon_hours": 4 * req.horizon, "actions": rows, "imputed_features": hist.imputed_features,
                "model": {"world_model": self.dir.world_model_name}}

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    async def not_found(self, request: Request, path: str) -> JSONResponse:
        async def fail() -> None:
            raise ApiError(404, f"no route {request.method} /{path}", "invalid_request_error", "not_found")
        return await self._run("unknown", request, fail)
