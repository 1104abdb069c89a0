"""The gateway's gRPC front: `inference.GRPCInferenceService`, forwarded by model name as raw bytes.

Model-level RPCs (infer, metadata, readiness, config, statistics) all carry the model name in field 1
of their request, so the front reads just that field and passes the message on unparsed. Only when
an A/B variant routes to another InferenceService (a different model name on its replicas) is the
message parsed and re-written. Server-level RPCs are answered here.

Calls go on to replicas over the same kept-alive HTTP/1.1 connections as REST
(`serving.protocol.grpc_http`): grpcio's asyncio client cost more per call than the model behind it.
The server itself is still grpcio's: uvicorn's HTTP/2 (zttp 0.0.35) measured faster, but drops a
connection after 4,096 calls on it ("flood detected"), failing the calls in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from grpc import aio
from tritonclient.grpc import service_pb2 as pb

from router.core import Router
from router.forward import HttpReply
from router.routes import Backend
from serving import __version__
from serving.auth import Guard, Scope, Target
from serving.auth.grpc import METHOD_SCOPES
from serving.errors import InvalidInput, as_serving_error
from serving.protocol.grpc_http import (
    GRPC,
    HTTP_BY_CODE,
    GrpcCall,
    GrpcError,
    GrpcReply,
    frame,
    status_of_reply,
    unframe,
)
from serving.protocol.rest import TRACE_HEADERS

__all__ = ["build_gateway_grpc_server", "model_name_of"]

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
#: model-level RPCs and their request message (used only to re-write the model name).
FORWARDED: dict[str, Any] = {
    "ModelInfer": pb.ModelInferRequest,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelReady": pb.ModelReadyRequest,
    "ModelConfig": pb.ModelConfigRequest,
    "ModelStatistics": pb.ModelStatisticsRequest,
}
#: the longest grpc-timeout the protocol can write in milliseconds (8 digits).
_MAX_TIMEOUT_MS = 99_999_999


def model_name_of(message: bytes) -> str:
    """Field 1 (a string) of a serialized protobuf message, found without parsing the rest."""
    pos, end = 0, len(message)
    while pos < end:
        key, pos = _varint(message, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = _varint(message, pos)
            if field == 1:
                return message[pos : pos + length].decode()
            pos += length
        elif wire == 0:
            _, pos = _varint(message, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise InvalidInput("malformed request message")
    return ""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise InvalidInput("malformed request message")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


class _GrpcFront:
    def __init__(self, router: Router, guard: Guard, targets: Callable[[], Mapping[str, Target]]) -> None:
        self.router = router
        self.guard = guard
        self.targets = targets

    def _check(self, method: str, call: GrpcCall, model: str | None) -> None:
        """The guard's verdict on `call`, with the scope METHOD_SCOPES gives `method` on `model`."""
        required = METHOD_SCOPES[method]
        if self.guard.enabled and required is not Scope.HEALTH:
            target = self.targets().get(model) if model else None
            self.guard.check(required, call.metadata.get("authorization"), target)

    def forwarder(self, method: str) -> Callable[[GrpcCall], Awaitable[GrpcReply]]:
        path = f"/{SERVICE}/{method}"
        message_class = FORWARDED[method]

        async def handle(call: GrpcCall) -> GrpcReply:
            try:
                model = model_name_of(call.message)
            except (InvalidInput, UnicodeDecodeError):
                model = None  # said below, once the caller is known to be allowed to hear it
            self._check(method, call, model)
            if model is None:
                raise InvalidInput(f"malformed {method} request")
            if not model:
                raise InvalidInput("the request names no model")
            decision = self.router.decide(model, call.metadata, {})
            forward = {k: call.metadata[k] for k in TRACE_HEADERS if k in call.metadata}

            async def send(backend: Backend, deadline: float) -> HttpReply:
                message = (
                    call.message
                    if backend.model == model
                    else _renamed(message_class, call.message, backend.model)
                )
                body = frame(message)
                headers = {**forward, **backend.pool.auth_headers, "content-type": GRPC}

                async def attempt(http_url: str, _grpc: str | None, timeout: float) -> HttpReply:
                    service_bound = True  # the service's timeout, not the client's deadline, is sooner
                    if (remaining := call.time_remaining()) is not None and remaining < timeout:
                        timeout, service_bound = remaining, False
                    headers["grpc-timeout"] = f"{min(_MAX_TIMEOUT_MS, max(1, int(timeout * 1000)))}m"
                    reply = await self.router.http.request("POST", http_url + path, body, headers, timeout)
                    code, message = status_of_reply(reply.status, reply.headers, reply.body)
                    if code is grpc.StatusCode.DEADLINE_EXCEEDED and service_bound:
                        # The replica ran out of the service's timeout a moment before the gateway's
                        # own timer: the same timeout, answered as the gateway answers it.
                        raise TimeoutError
                    if code is grpc.StatusCode.OK:
                        return HttpReply(200, reply.body)
                    # As an HTTP status, so metrics, retries and evictions read it like REST's.
                    return HttpReply(HTTP_BY_CODE.get(code, 500), message.encode(), {"grpc-code": code.name})

                return await self.router.deliver(backend, deadline, attempt)

            reply = await self.router.send(decision, send, "grpc")
            if reply.status != 200:
                raise GrpcError(grpc.StatusCode[reply.headers["grpc-code"]], reply.body.decode())
            return GrpcReply(unframe(reply.body), decision.response_headers())

        return handle

    def local(self, method: str, answer: Callable[[], Any]) -> Callable[[GrpcCall], Awaitable[GrpcReply]]:
        """A server-level RPC answered here by `answer()` (a message)."""

        async def handle(call: GrpcCall) -> GrpcReply:
            self._check(method, call, None)
            return GrpcReply(answer().SerializeToString())

        return handle

    def repository_index(self) -> pb.RepositoryIndexResponse:
        table = self.router.table
        models = [
            pb.RepositoryIndexResponse.ModelIndex(name=name, state="READY")
            for name in sorted([*table.services, *table.models])
        ]
        return pb.RepositoryIndexResponse(models=models)


def _renamed(message_class: Any, request: bytes, model: str) -> bytes:
    message = message_class.FromString(request)
    if hasattr(message, "model_name"):
        message.model_name = model
    else:
        message.name = model
    return message.SerializeToString()


def build_gateway_grpc_server(
    router: Router,
    max_message_bytes: int,
    guard: Guard | None = None,
    targets: Callable[[], Mapping[str, Target]] = dict,
) -> aio.Server:
    """The gateway's gRPC server; every method behind `guard` with the scope `METHOD_SCOPES` gives
    it, on the service the request names."""
    front = _GrpcFront(router, guard or Guard(None), targets)
    handlers = {name: front.forwarder(name) for name in FORWARDED} | {
        "ServerLive": front.local("ServerLive", lambda: pb.ServerLiveResponse(live=True)),
        "ServerReady": front.local("ServerReady", lambda: pb.ServerReadyResponse(ready=True)),
        "ServerMetadata": front.local(
            "ServerMetadata",
            lambda: pb.ServerMetadataResponse(
                name="servegate-gateway", version=__version__, extensions=["binary_tensor_data"]
            ),
        ),
        "RepositoryIndex": front.local("RepositoryIndex", front.repository_index),
    }
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    methods = {name: grpc.unary_unary_rpc_method_handler(_on_aio(name, h)) for name, h in handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    return server


def _on_aio(method: str, handler: Callable[[GrpcCall], Awaitable[GrpcReply]]) -> Any:
    """`handler` as a grpc.aio method handler taking and returning serialized messages."""

    async def handle(request: bytes, context: aio.ServicerContext) -> bytes:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        code = message = None
        try:
            reply = await handler(GrpcCall(method, request, metadata, deadline))
        except GrpcError as exc:
            code, message = exc.code, exc.message
        except Exception as exc:
            error = as_serving_error(exc)
            if error is not exc:
                log.exception("unexpected error in %s", method)
            code, message = error.grpc_code, error.message
        if code is not None:
            await context.abort(code, message)
        if reply.metadata:
            await context.send_initial_metadata(tuple(reply.metadata.items()))
        return reply.message

    return handle
