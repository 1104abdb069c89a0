"""One error type for every protocol.

A `ServingError` carries an `ErrorKind`; the kind maps to an HTTP status and a gRPC status code in
one table (`ERROR_TABLE`), so V1 REST, V2 REST and gRPC can never disagree about what a failure
means. Protocol adapters turn any `ServingError` into their wire form; anything else is a bug in
the server or a model and is reported as INTERNAL.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc

__all__ = [
    "ERROR_TABLE",
    "ErrorKind",
    "InferenceTimeout",
    "InvalidInput",
    "ModelFailure",
    "ModelNotFound",
    "ModelNotReady",
    "PayloadTooLarge",
    "PermissionDenied",
    "ServerUnavailable",
    "ServingError",
    "Unauthenticated",
    "as_serving_error",
    "kind_for_status",
]


@dataclass(frozen=True, slots=True)
class _Codes:
    http_status: int
    grpc_code: grpc.StatusCode


class ErrorKind(enum.Enum):
    """What went wrong, independent of the protocol that reports it."""

    INVALID_INPUT = _Codes(400, grpc.StatusCode.INVALID_ARGUMENT)
    UNAUTHENTICATED = _Codes(401, grpc.StatusCode.UNAUTHENTICATED)
    PERMISSION_DENIED = _Codes(403, grpc.StatusCode.PERMISSION_DENIED)
    NOT_FOUND = _Codes(404, grpc.StatusCode.NOT_FOUND)
    PAYLOAD_TOO_LARGE = _Codes(413, grpc.StatusCode.RESOURCE_EXHAUSTED)
    MODEL_FAILURE = _Codes(500, grpc.StatusCode.INTERNAL)
    UNAVAILABLE = _Codes(503, grpc.StatusCode.UNAVAILABLE)
    TIMEOUT = _Codes(504, grpc.StatusCode.DEADLINE_EXCEEDED)

    @property
    def http_status(self) -> int:
        return self.value.http_status

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return self.value.grpc_code


#: kind -> (HTTP status, gRPC code); the single source of truth, walked by tests.
ERROR_TABLE: dict[ErrorKind, tuple[int, grpc.StatusCode]] = {
    kind: (kind.http_status, kind.grpc_code) for kind in ErrorKind
}


class ServingError(Exception):
    """An error with a meaning every protocol adapter knows how to report."""

    kind: ErrorKind = ErrorKind.MODEL_FAILURE

    def __init__(self, message: str, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind

    @property
    def http_status(self) -> int:
        return self.kind.http_status

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return self.kind.grpc_code


class InvalidInput(ServingError):
    kind = ErrorKind.INVALID_INPUT


class Unauthenticated(ServingError):
    """No token, or one that is malformed, unknown, expired or revoked."""

    kind = ErrorKind.UNAUTHENTICATED


class PermissionDenied(ServingError):
    """A valid token without the scope (or namespace, or service) the request needs."""

    kind = ErrorKind.PERMISSION_DENIED


class ModelNotFound(ServingError):
    kind = ErrorKind.NOT_FOUND


class PayloadTooLarge(ServingError):
    kind = ErrorKind.PAYLOAD_TOO_LARGE


class ModelFailure(ServingError):
    kind = ErrorKind.MODEL_FAILURE


class ModelNotReady(ServingError):
    kind = ErrorKind.UNAVAILABLE


class ServerUnavailable(ServingError):
    kind = ErrorKind.UNAVAILABLE


class InferenceTimeout(ServingError):
    kind = ErrorKind.TIMEOUT


def kind_for_status(http_status: int) -> ErrorKind | None:
    """The error kind an HTTP status reports (None for a status outside the table, and for success)."""
    return _BY_STATUS.get(http_status)


_BY_STATUS = {kind.http_status: kind for kind in ErrorKind}


def as_serving_error(exc: BaseException) -> ServingError:
    """Wrap an unexpected exception (a bug in a model or the server) as a MODEL_FAILURE."""
    if isinstance(exc, ServingError):
        return exc
    return ModelFailure(f"{type(exc).__name__}: {exc}")
