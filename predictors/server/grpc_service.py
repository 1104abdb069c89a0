"""Open Inference Protocol over gRPC: `inference.GRPCInferenceService` over the data plane.

Triton's generated stubs (shipped with tritonclient) define the service; RPCs servegate does not
offer (shared memory, tracing, statistics) answer UNIMPLEMENTED from the generated base class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpc import StatusCode, aio
from tritonclient.grpc import model_config_pb2, service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from predictors.dataplane import DataPlane
from serving.auth import Guard
from serving.auth.grpc import METHOD_SCOPES, guarded
from serving.auth.rest import ScopedRoute, scoped_routes
from serving.errors import ErrorKind, InvalidInput, as_serving_error
from serving.protocol import grpc_codec
from serving.protocol.grpc_http import GrpcCall, GrpcEndpoint, GrpcError, GrpcReply

__all__ = ["build_grpc_server", "grpc_routes"]

log = logging.getLogger(__name__)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The RPCs; a failure raises, and `_guarded` turns it into the status the error table gives."""

    def __init__(self, dataplane: DataPlane, model_control: bool = False) -> None:
        self.dataplane = dataplane
        self.model_control = model_control

    def _model_control(self) -> None:
        if not self.model_control:
            raise InvalidInput(
                "loading and unloading models is off on this server: start it with --model-control explicit"
            )

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version or None))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        meta = self.dataplane.model_metadata(request.name, request.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=list(meta.versions),
            platform=meta.platform,
            inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in meta.inputs],
            outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in meta.outputs],
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        config = self.dataplane.model_config(request.name, request.version or None)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        started = time.perf_counter()
        kind: ErrorKind | None = None
        try:
            remaining = context.time_remaining()
            deadline = time.monotonic() + remaining if remaining is not None else None
            infer_request = grpc_codec.decode_request(request, deadline)
            infer_request.headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
            response = await self.dataplane.infer(infer_request)
            return grpc_codec.encode_response(response)
        except Exception as exc:
            kind = as_serving_error(exc).kind
            raise
        finally:
            self.dataplane.record(request.model_name, "grpc", kind, started)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        entries = self.dataplane.repository_index(request.ready)
        model_index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                model_index(
                    name=e["name"], version=e["version"], state=e.get("state", ""), reason=e.get("reason", "")
                )
                for e in entries
            ]
        )

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        self._model_control()
        await self.dataplane.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        self._model_control()
        await self.dataplane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def build_grpc_server(
    dataplane: DataPlane,
    max_message_bytes: int,
    reuse_port: bool = False,
    guard: Guard | None = None,
    model_control: bool = False,
) -> aio.Server:
    """The replica's gRPC server: every method but health behind `guard` (None: open);
    `model_control` turns on RepositoryModelLoad/Unload."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),
        # Only worker processes of one replica may share the port (--workers); otherwise a second
        # server on the same port must fail rather than silently split the traffic.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    server = aio.server(options=options)
    servicer = InferenceServicer(dataplane, model_control)
    server.add_generic_rpc_handlers((_handlers(servicer, guard or Guard(None)),))
    return server


@dataclass(frozen=True, slots=True)
class _Malformed:
    error: str


def _parser(message_class: Any) -> Callable[[bytes], Any]:
    # grpc-python answers UNKNOWN when its deserializer raises; parse here and let the handler say
    # INVALID_ARGUMENT instead, like every other bad request.
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return _Malformed(str(exc))

    return parse


def _guarded(method: Callable[[Any, Any], Awaitable[Any]], name: str) -> Callable[[Any, Any], Awaitable[Any]]:
    """`method` with a malformed request refused, and any failure reported through the error table."""

    async def handle(request: Any, context: aio.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            await context.abort(StatusCode.INVALID_ARGUMENT, f"malformed {name} request: {request.error}")
        try:
            return await method(request, context)
        except Exception as exc:
            error = as_serving_error(exc)
            if error is not exc:
                log.exception("gRPC %s failed", name)
            await context.abort(error.grpc_code, error.message)

    return handle


def _handlers(servicer: InferenceServicer, guard: Guard) -> grpc.GenericRpcHandler:
    """Handlers for the RPCs servegate implements; any other RPC answers UNIMPLEMENTED."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    base = service_pb2_grpc.GRPCInferenceServiceServicer
    handlers = {}
    for method in service.methods:
        implementation = getattr(type(servicer), method.name, None)
        if implementation is None or implementation is getattr(base, method.name, None):
            continue
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            guarded(_guarded(getattr(servicer, method.name), method.name), method.name, guard),
            request_deserializer=_parser(getattr(pb, method.input_type.name)),
            response_serializer=lambda message: message.SerializeToString(),
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def grpc_routes(
    dataplane: DataPlane, max_message_bytes: int, guard: Guard, model_control: bool = False
) -> list[ScopedRoute]:
    """The same RPCs as routes of the replica's HTTP app (`/inference.GRPCInferenceService/<RPC>`),
    which is how the gateway calls them: over its kept-alive HTTP/1.1 connections, each route
    behind `guard` with its method's scope (serving.protocol.grpc_http)."""
    servicer = InferenceServicer(dataplane, model_control)
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    base = service_pb2_grpc.GRPCInferenceServiceServicer
    route = scoped_routes(guard)
    routes = []
    for method in service.methods:
        implementation = getattr(type(servicer), method.name, None)
        if implementation is None or implementation is getattr(base, method.name, None):
            continue
        handler = _call_handler(
            getattr(servicer, method.name), method.name, getattr(pb, method.input_type.name)
        )
        endpoint = GrpcEndpoint(handler, max_message_bytes)
        routes.append(
            route(f"/{service.full_name}/{method.name}", endpoint, METHOD_SCOPES[method.name], "POST")
        )
    return routes


def _call_handler(
    method: Callable[[Any, Any], Awaitable[Any]], name: str, message_class: Any
) -> Callable[[GrpcCall], Awaitable[GrpcReply]]:
    async def handle(call: GrpcCall) -> GrpcReply:
        try:
            request = message_class.FromString(call.message)
        except DecodeError as exc:
            raise GrpcError(StatusCode.INVALID_ARGUMENT, f"malformed {name} request: {exc}") from None
        # The call answers what the servicer asks of a context (metadata, time remaining).
        return GrpcReply((await method(request, call)).SerializeToString())

    return handle
