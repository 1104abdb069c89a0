"""The gateway's gRPC front: `inference.GRPCInferenceService`, forwarded by model name as raw bytes.

Model-level RPCs (infer, metadata, readiness, config, statistics) all carry the model name in field 1
of their request, so the front reads just that field and passes the message on unparsed. Only when
an A/B variant routes to another InferenceService (a different model name on its replicas) is the
message parsed and re-written. Server-level RPCs are answered here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from grpc import aio
from tritonclient.grpc import service_pb2 as pb

from router.core import Router
from router.forward import HttpReply
from router.routes import Backend
from serving import __version__
from serving.auth import Guard, Target
from serving.auth.grpc import guarded
from serving.errors import ERROR_TABLE, InvalidInput, ServingError, as_serving_error
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
_HTTP_BY_CODE = {code: status for status, code in ERROR_TABLE.values()}
#: metadata a client sends that replicas should see (tracing, request ids); the rest stays here.
_FORWARDED_METADATA = TRACE_HEADERS


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
    def __init__(self, router: Router) -> None:
        self.router = router

    def forwarder(self, method: str) -> Callable[[bytes, aio.ServicerContext], Awaitable[bytes]]:
        path = f"/{SERVICE}/{method}"
        message_class = FORWARDED[method]

        async def handle(request: bytes, context: aio.ServicerContext) -> bytes:
            try:
                model = model_name_of(request)
                if not model:
                    raise InvalidInput("the request names no model")
                metadata = {k: v for k, v in context.invocation_metadata() or ()}
                decision = self.router.decide(model, metadata, {})
                forward = tuple((k, metadata[k]) for k in _FORWARDED_METADATA if k in metadata)

                async def send(backend: Backend, deadline: float) -> HttpReply:
                    body = (
                        request if backend.model == model else _renamed(message_class, request, backend.model)
                    )

                    async def attempt(_http: str, target: str | None, timeout: float) -> HttpReply:
                        if target is None:
                            raise ServingError(f"revision {backend.revision} serves no gRPC")
                        try:
                            metadata = forward + backend.pool.auth_metadata
                            reply, _ = await self.router.grpc.call(target, path, body, metadata, timeout)
                        except aio.AioRpcError as exc:
                            status = _HTTP_BY_CODE.get(exc.code(), 500)
                            return HttpReply(
                                status, (exc.details() or "").encode(), {"grpc-code": exc.code().name}
                            )
                        return HttpReply(200, reply)

                    return await self.router.deliver(backend, deadline, attempt)

                reply = await self.router.send(decision, send, "grpc")
            except ServingError as exc:
                await context.abort(exc.grpc_code, exc.message)
            except Exception as exc:
                log.exception("unexpected error in %s", method)
                error = as_serving_error(exc)
                await context.abort(error.grpc_code, error.message)
            await context.send_initial_metadata(tuple(decision.response_headers().items()))
            if reply.status != 200:
                code = grpc.StatusCode[reply.headers["grpc-code"]]
                await context.abort(code, reply.body.decode())
            return reply.body

        return handle

    async def server_live(self, request: bytes, context: aio.ServicerContext) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(self, request: bytes, context: aio.ServicerContext) -> bytes:
        return pb.ServerReadyResponse(ready=True).SerializeToString()

    async def server_metadata(self, request: bytes, context: aio.ServicerContext) -> bytes:
        return pb.ServerMetadataResponse(
            name="servegate-gateway", version=__version__, extensions=["binary_tensor_data"]
        ).SerializeToString()

    async def repository_index(self, request: bytes, context: aio.ServicerContext) -> bytes:
        table = self.router.table
        models = [
            pb.RepositoryIndexResponse.ModelIndex(name=name, state="READY")
            for name in sorted([*table.services, *table.models])
        ]
        return pb.RepositoryIndexResponse(models=models).SerializeToString()


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
    """The gateway's gRPC server; every method behind `guard` with the scope `METHOD_SCOPES` gives it."""
    front = _GrpcFront(router)
    guard = guard or Guard(None)

    def target(request: bytes) -> Target | None:
        try:
            return targets().get(model_name_of(request))
        except (InvalidInput, UnicodeDecodeError):
            return None  # the handler says what is wrong with the message

    implemented: dict[str, Any] = {name: (front.forwarder(name), target) for name in FORWARDED} | {
        "ServerLive": (front.server_live, None),
        "ServerReady": (front.server_ready, None),
        "ServerMetadata": (front.server_metadata, None),
        "RepositoryIndex": (front.repository_index, None),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(guarded(handler, name, guard, of))
        for name, (handler, of) in implemented.items()
    }
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    return server
