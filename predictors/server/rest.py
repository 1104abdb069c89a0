"""KServe V1 and Open Inference Protocol V2 over REST: a Starlette app over the data plane."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from predictors.dataplane import DataPlane
from predictors.server._body import compress, read_body
from predictors.server.grpc_service import grpc_routes
from serving.auth import Guard, Scope
from serving.auth.hosts import LoopbackHostMiddleware
from serving.auth.rest import HotRoutes, require_scopes, scoped_routes
from serving.errors import ErrorKind, InvalidInput, as_serving_error
from serving.protocol import v1, v2
from serving.protocol.rest import EXCEPTION_HANDLERS, error_response, json_response

__all__ = ["build_app"]

log = logging.getLogger(__name__)

_JSON = "application/json"
_BINARY = "application/octet-stream"


class _Endpoints:
    def __init__(self, dataplane: DataPlane, registry: CollectorRegistry, max_body_bytes: int) -> None:
        self.dataplane = dataplane
        self.registry = registry
        self.max_body = max_body_bytes
        self.model_control = False

    # -- inference: one path for every protocol, so metrics and errors cannot drift apart ---------

    async def _infer(
        self, request: Request, protocol: str, handle: Callable[[Request, bytes], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        name = request.path_params["model_name"]
        kind: ErrorKind | None = None
        try:
            body = await read_body(request, self.max_body)
            return await handle(request, body)
        except Exception as exc:
            error = as_serving_error(exc)
            if error is not exc:
                log.exception("inference on model %s failed", name)
            kind = error.kind
            return error_response(error)
        finally:
            self.dataplane.record(name, protocol, kind, started)

    async def v2_infer(self, request: Request) -> Response:
        return await self._infer(request, "v2", self._v2_infer)

    async def _v2_infer(self, request: Request, body: bytes) -> Response:
        params = request.path_params
        # An unknown model is the first thing to tell, whatever else is wrong with the request.
        self.dataplane.model(params["model_name"], params.get("version"))
        header = request.headers.get(v2.HEADER_LENGTH)
        if header is not None and not (header.isascii() and header.isdigit()):
            raise InvalidInput(f"Inference-Header-Content-Length must be an integer, got '{header}'")
        infer_request = v2.decode_request(
            body, params["model_name"], params.get("version"), int(header) if header is not None else None
        )
        infer_request.headers = request.headers
        response = await self.dataplane.infer(infer_request)
        content, header_length = v2.encode_response(response, infer_request)
        headers = {}
        if header_length is not None:
            headers["Inference-Header-Content-Length"] = str(header_length)
        content, encoding = compress(content, request.headers.get("accept-encoding"))
        if encoding:
            headers["Content-Encoding"] = encoding
        media_type = _JSON if header_length is None else _BINARY
        return Response(content, media_type=media_type, headers=headers)

    async def v1_predict(self, request: Request) -> Response:
        return await self._infer(request, "v1", self._v1_predict)

    async def _v1_predict(self, request: Request, body: bytes) -> Response:
        model = self.dataplane.model(request.path_params["model_name"])
        infer_request = v1.decode_request(body, model.name, model.signature.inputs)
        infer_request.headers = request.headers
        response = await self.dataplane.infer(infer_request)
        return Response(v1.encode_response(response), media_type=_JSON)

    # -- health and metadata ----------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        return json_response({"status": "alive"})

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = self.dataplane.ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(self.dataplane.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        params = request.path_params
        return json_response(
            self.dataplane.model_metadata(params["model_name"], params.get("version")).as_dict()
        )

    async def model_config(self, request: Request) -> Response:
        params = request.path_params
        return json_response(self.dataplane.model_config(params["model_name"], params.get("version")))

    async def model_ready(self, request: Request) -> Response:
        params = request.path_params
        ready = self.dataplane.model_ready(params["model_name"], params.get("version"))
        return json_response({"name": params["model_name"], "ready": ready}, 200 if ready else 503)

    async def v1_models(self, request: Request) -> Response:
        return json_response({"models": sorted(self.dataplane.repository.names)})

    async def v1_model(self, request: Request) -> Response:
        if request.path_params["model_name"].endswith(":predict"):
            return json_response({"error": f"use POST for {request.url.path}"}, 405)
        model = self.dataplane.model(request.path_params["model_name"])
        return json_response({"name": model.name, "ready": model.ready})

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    # -- repository extension ---------------------------------------------------------------------

    async def repository_index(self, request: Request) -> Response:
        body = await read_body(request, self.max_body)
        options = v2.loads_object(body, "index request") if body.strip() else {}
        return json_response(self.dataplane.repository_index(bool(options.get("ready", False))))

    def _model_control(self) -> None:
        if not self.model_control:
            raise InvalidInput(
                "loading and unloading models is off on this server: start it with --model-control explicit"
            )

    async def load(self, request: Request) -> Response:
        self._model_control()
        # Triton's load request, plus servegate's `storage_uri` / `model_format` parameters: load a
        # model the replica was not started with (a gateway placing TrainedModels does this).
        body = await read_body(request, self.max_body)
        options = v2.loads_object(body, "load request") if body.strip() else {}
        parameters = options.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput("load request 'parameters' must be an object")
        uri, fmt = parameters.get("storage_uri"), parameters.get("model_format")
        if not isinstance(uri, str | None) or not isinstance(fmt, str | None):
            raise InvalidInput("load parameters 'storage_uri' and 'model_format' must be strings")
        await self.dataplane.load(request.path_params["model_name"], uri, fmt)
        return json_response({"name": request.path_params["model_name"], "load": True})

    async def unload(self, request: Request) -> Response:
        self._model_control()
        await read_body(request, self.max_body)
        await self.dataplane.unload(request.path_params["model_name"])
        return json_response({"name": request.path_params["model_name"], "unload": True})


def build_app(
    dataplane: DataPlane,
    registry: CollectorRegistry,
    max_body_bytes: int,
    guard: Guard | None = None,
    model_control: bool = False,
    loopback_only: bool = False,
) -> ASGIApp:
    """The replica's ASGI app. Every route but health goes through `guard` (None: open);
    `model_control` turns on the repository load/unload API (Triton's `--model-control-mode explicit`);
    `loopback_only` (a server bound to loopback) refuses requests addressed to other host names."""
    e = _Endpoints(dataplane, registry, max_body_bytes)
    e.model_control = model_control
    guard = guard or Guard(None)
    model = "/v2/models/{model_name}"
    versioned = model + "/versions/{version}"

    route = scoped_routes(guard)
    # gRPC's RPCs, as the gateway passes them on (HTTP/1.1, the status in the headers).
    rpcs = grpc_routes(dataplane, max_body_bytes, guard, model_control)
    hot = [
        route(model + "/infer", e.v2_infer, Scope.INFER, "POST"),
        *[r for r in rpcs if r.path.endswith("/ModelInfer")],
        route("/v1/models/{model_name}:predict", e.v1_predict, Scope.INFER, "POST"),
    ]
    routes = [
        *hot,
        route("/", e.root, Scope.HEALTH),
        route("/metrics", e.metrics, Scope.METRICS),
        route("/v1/models", e.v1_models, Scope.INFER),
        route("/v1/models/{model_name}", e.v1_model, Scope.INFER),
        route("/v2", e.server_metadata, Scope.INFER),
        route("/v2/health/live", e.live, Scope.HEALTH),
        route("/v2/health/ready", e.ready, Scope.HEALTH),
        route(model, e.model_metadata, Scope.INFER),
        route(versioned, e.model_metadata, Scope.INFER),
        route(model + "/config", e.model_config, Scope.INFER),
        route(versioned + "/config", e.model_config, Scope.INFER),
        route(model + "/ready", e.model_ready, Scope.HEALTH),
        route(versioned + "/ready", e.model_ready, Scope.HEALTH),
        route(versioned + "/infer", e.v2_infer, Scope.INFER, "POST"),
        route("/v2/repository/index", e.repository_index, Scope.INFER, "POST"),
        route("/v2/repository/models/{model_name}/load", e.load, Scope.ADMIN, "POST"),
        route("/v2/repository/models/{model_name}/unload", e.unload, Scope.ADMIN, "POST"),
        *[r for r in rpcs if r not in hot],
    ]
    require_scopes(routes)
    app = HotRoutes(Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS), hot, EXCEPTION_HANDLERS)
    return LoopbackHostMiddleware(app) if loopback_only else app
