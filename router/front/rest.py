"""The gateway's REST front: KServe V1 and Open Inference Protocol V2 paths, forwarded by model name.

Bodies pass through untouched (JSON, the binary tensor extension, gzip), so a request costs the
gateway one read and one write. Server-level endpoints (health, server metadata, the model list)
are answered here; model-level ones go to a replica of the model, like inference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from router.core import COMPONENT_HEADER, Router
from serving import __version__
from serving.auth import Guard, Scope, Target
from serving.auth.hosts import LoopbackHostMiddleware
from serving.auth.internal import may_skip_transformer
from serving.auth.rest import HotRoutes, principal_of, require_scopes, scoped_routes
from serving.errors import ModelNotFound, PermissionDenied
from serving.protocol.rest import EXCEPTION_HANDLERS, read_raw

__all__ = ["build_gateway_app"]


class _Front:
    def __init__(self, router: Router, registry: CollectorRegistry, max_body_bytes: int) -> None:
        self.router = router
        self.registry = registry
        self.max_body = max_body_bytes

    async def _forward(self, request: Request, prefix: str, suffix: str, protocol: str) -> Response:
        model = request.path_params["model_name"]
        internal = request.headers.get(COMPONENT_HEADER) == "predictor"
        if internal and not may_skip_transformer(principal_of(request), model):
            raise PermissionDenied(
                f"only InferenceService '{model}''s own transformer may call its predictor directly "
                f"({COMPONENT_HEADER})"
            )
        decision = self.router.decide(model, request.headers, request.cookies, internal)
        body = await read_raw(request, self.max_body) if request.method == "POST" else None
        send = self.router.http_sender(request.method, prefix, suffix, body or b"", request.headers)
        reply = await self.router.send(decision, send, protocol)
        logger = decision.route.loggers.get(decision.backend.component)
        if logger is not None and body is not None:
            self.router.payload_logger.log(
                logger, decision.route, decision.backend, body, request.headers, reply
            )
        headers = reply.headers | decision.response_headers()
        return Response(reply.body, reply.status, headers)

    async def v2_infer(self, request: Request) -> Response:
        version = request.path_params.get("version")
        suffix = f"/versions/{version}/infer" if version else "/infer"
        return await self._forward(request, "/v2/models/", suffix, "v2")

    async def v2_model(self, request: Request) -> Response:
        version = request.path_params.get("version")
        tail = request.url.path.rsplit("/", 1)[1] if request.url.path.endswith(("/ready", "/config")) else ""
        suffix = (f"/versions/{version}" if version else "") + (f"/{tail}" if tail else "")
        return await self._forward(request, "/v2/models/", suffix, "v2")

    async def v1_predict(self, request: Request) -> Response:
        return await self._forward(request, "/v1/models/", ":predict", "v1")

    async def v1_explain(self, request: Request) -> Response:
        return await self._forward(request, "/v1/models/", ":explain", "v1")

    async def v1_model(self, request: Request) -> Response:
        return await self._forward(request, "/v1/models/", "", "v1")

    async def graph(self, request: Request) -> Response:
        name = request.path_params["graph_name"]
        runner = self.router.table.graphs.get(name)
        if runner is None:
            raise ModelNotFound(f"InferenceGraph '{name}' not found")
        body = await read_raw(request, self.max_body)
        reply = await runner.run(body, request.headers)
        return Response(reply.body, reply.status, dict(reply.headers))

    async def v1_models(self, request: Request) -> Response:
        return JSONResponse({"models": self._model_names()})

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(
            {"name": "servegate-gateway", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def repository_index(self, request: Request) -> Response:
        return JSONResponse([{"name": name, "state": "READY"} for name in self._model_names()])

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def _model_names(self) -> list[str]:
        table = self.router.table
        return sorted([*table.services, *table.models])


def build_gateway_app(
    router: Router,
    registry: CollectorRegistry,
    max_body_bytes: int,
    extra_routes: Sequence[BaseRoute] = (),
    guard: Guard | None = None,
    targets: Callable[[], Mapping[str, Target]] = dict,
    loopback_only: bool = False,
) -> ASGIApp:
    """The gateway's ASGI app: the data plane, `/metrics`, and `extra_routes` (control API, dashboard).

    Every route declares its scope and goes through `guard` (None: authentication off); `targets()`
    maps a model or graph name to its namespace for namespace- and service-limited tokens. A route
    without a scope, here or in `extra_routes`, stops the build. `loopback_only` (a gateway bound
    to loopback) refuses requests addressed to other host names (DNS rebinding).
    """
    f = _Front(router, registry, max_body_bytes)
    guard = guard or Guard(None)
    model = "/v2/models/{model_name}"
    versioned = model + "/versions/{version}"

    def target(params: dict[str, Any]) -> Target | None:
        return targets().get(params.get("model_name") or params.get("graph_name") or "")

    # A path that names no model or graph has no target (targets().get("") is None).
    route = scoped_routes(guard, target)

    hot = [
        route(model + "/infer", f.v2_infer, Scope.INFER, "POST"),
        route("/v1/models/{model_name}:predict", f.v1_predict, Scope.INFER, "POST"),
    ]
    routes: list[BaseRoute] = [
        *hot,
        route(versioned + "/infer", f.v2_infer, Scope.INFER, "POST"),
        route("/v1/models/{model_name}:explain", f.v1_explain, Scope.INFER, "POST"),
        route("/v1/models", f.v1_models, Scope.INFER),
        route("/v1/models/{model_name}", f.v1_model, Scope.INFER),
        route("/v2", f.server_metadata, Scope.INFER),
        route("/v2/health/live", f.live, Scope.HEALTH),
        route("/v2/health/ready", f.ready, Scope.HEALTH),
        route(model, f.v2_model, Scope.INFER),
        route(versioned, f.v2_model, Scope.INFER),
        route(model + "/ready", f.v2_model, Scope.HEALTH),
        route(versioned + "/ready", f.v2_model, Scope.HEALTH),
        route(model + "/config", f.v2_model, Scope.INFER),
        route(versioned + "/config", f.v2_model, Scope.INFER),
        route("/v2/repository/index", f.repository_index, Scope.INFER, "POST"),
        route("/graphs/{graph_name}", f.graph, Scope.INFER, "POST"),
        route("/metrics", f.metrics, Scope.METRICS),
        *extra_routes,
    ]
    require_scopes(routes)
    app = HotRoutes(Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS), hot, EXCEPTION_HANDLERS)
    return LoopbackHostMiddleware(app) if loopback_only else app
