"""Scopes on gRPC methods: the scope of every `inference.GRPCInferenceService` method, and the
wrapper that checks a call's `authorization` metadata before its handler runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from grpc import aio

from serving.auth.guard import Guard
from serving.auth.scopes import Scope, Target
from serving.errors import ServingError

__all__ = ["METHOD_SCOPES", "guarded"]

#: every method of inference.GRPCInferenceService (implemented or not) and what it needs.
METHOD_SCOPES: dict[str, Scope] = {
    "ServerLive": Scope.HEALTH,
    "ServerReady": Scope.HEALTH,
    "ModelReady": Scope.HEALTH,
    "ServerMetadata": Scope.INFER,
    "ModelMetadata": Scope.INFER,
    "ModelInfer": Scope.INFER,
    "ModelStreamInfer": Scope.INFER,
    "ModelConfig": Scope.INFER,
    "ModelStatistics": Scope.METRICS,
    "RepositoryIndex": Scope.INFER,
    "RepositoryModelLoad": Scope.ADMIN,
    "RepositoryModelUnload": Scope.ADMIN,
    "SystemSharedMemoryStatus": Scope.ADMIN,
    "SystemSharedMemoryRegister": Scope.ADMIN,
    "SystemSharedMemoryUnregister": Scope.ADMIN,
    "CudaSharedMemoryStatus": Scope.ADMIN,
    "CudaSharedMemoryRegister": Scope.ADMIN,
    "CudaSharedMemoryUnregister": Scope.ADMIN,
    "TraceSetting": Scope.ADMIN,
    "LogSettings": Scope.ADMIN,
}

Handler = Callable[[Any, aio.ServicerContext], Awaitable[Any]]


def guarded(
    handler: Handler, method: str, guard: Guard, target: Callable[[Any], Target | None] | None = None
) -> Handler:
    """`handler` behind the guard, with the scope METHOD_SCOPES gives `method` (KeyError if none:
    a method nobody declared is refused at build time, not at call time)."""
    required = METHOD_SCOPES[method]

    async def handle(request: Any, context: aio.ServicerContext) -> Any:
        if guard.enabled and required is not Scope.HEALTH:
            authorization = None
            for key, value in context.invocation_metadata() or ():
                if key == "authorization":
                    authorization = value if isinstance(value, str) else value.decode("latin-1")
                    break
            try:
                guard.check(required, authorization, target(request) if target is not None else None)
            except ServingError as exc:
                await context.abort(exc.grpc_code, exc.message)
        return await handler(request, context)

    return handle
