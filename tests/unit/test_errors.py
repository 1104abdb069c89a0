"""The error table: one ErrorKind -> (HTTP status, gRPC code), walked for every kind and adapter."""

from __future__ import annotations

import grpc
import orjson
import pytest

from serving.errors import (
    ERROR_TABLE,
    ErrorKind,
    InferenceTimeout,
    InvalidInput,
    ModelFailure,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    PermissionDenied,
    ServerUnavailable,
    ServingError,
    Unauthenticated,
    as_serving_error,
)
from serving.protocol.rest import error_response

EXPECTED = {
    ErrorKind.INVALID_INPUT: (400, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorKind.UNAUTHENTICATED: (401, grpc.StatusCode.UNAUTHENTICATED),
    ErrorKind.PERMISSION_DENIED: (403, grpc.StatusCode.PERMISSION_DENIED),
    ErrorKind.NOT_FOUND: (404, grpc.StatusCode.NOT_FOUND),
    ErrorKind.PAYLOAD_TOO_LARGE: (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ErrorKind.MODEL_FAILURE: (500, grpc.StatusCode.INTERNAL),
    ErrorKind.UNAVAILABLE: (503, grpc.StatusCode.UNAVAILABLE),
    ErrorKind.TIMEOUT: (504, grpc.StatusCode.DEADLINE_EXCEEDED),
}

SUBCLASSES = {
    InvalidInput: ErrorKind.INVALID_INPUT,
    Unauthenticated: ErrorKind.UNAUTHENTICATED,
    PermissionDenied: ErrorKind.PERMISSION_DENIED,
    ModelNotFound: ErrorKind.NOT_FOUND,
    PayloadTooLarge: ErrorKind.PAYLOAD_TOO_LARGE,
    ModelFailure: ErrorKind.MODEL_FAILURE,
    ModelNotReady: ErrorKind.UNAVAILABLE,
    ServerUnavailable: ErrorKind.UNAVAILABLE,
    InferenceTimeout: ErrorKind.TIMEOUT,
}


def test_table_is_exactly_the_expected_pairs() -> None:
    assert ERROR_TABLE == EXPECTED


def test_table_covers_every_kind() -> None:
    assert set(ERROR_TABLE) == set(ErrorKind)


@pytest.mark.parametrize("kind", list(ErrorKind), ids=lambda k: k.name)
def test_every_kind_has_an_http_status_and_a_grpc_code(kind: ErrorKind) -> None:
    status, code = ERROR_TABLE[kind]
    assert isinstance(status, int) and 400 <= status < 600
    assert isinstance(code, grpc.StatusCode) and code != grpc.StatusCode.OK
    assert (kind.http_status, kind.grpc_code) == (status, code)


@pytest.mark.parametrize("kind", list(ErrorKind), ids=lambda k: k.name)
def test_serving_error_with_explicit_kind_reports_its_codes(kind: ErrorKind) -> None:
    error = ServingError("something", kind)
    assert error.kind is kind
    assert (error.http_status, error.grpc_code) == EXPECTED[kind]


def test_serving_error_defaults_to_model_failure() -> None:
    assert ServingError("boom").kind is ErrorKind.MODEL_FAILURE


@pytest.mark.parametrize("cls", list(SUBCLASSES), ids=lambda c: c.__name__)
def test_subclass_maps_to_its_kind(cls: type[ServingError]) -> None:
    error = cls("why it failed")
    assert error.kind is SUBCLASSES[cls]
    assert (error.http_status, error.grpc_code) == EXPECTED[SUBCLASSES[cls]]
    assert error.message == "why it failed"
    assert str(error) == "why it failed"


def test_every_subclass_is_listed() -> None:
    assert set(ServingError.__subclasses__()) == set(SUBCLASSES)


@pytest.mark.parametrize("cls", list(SUBCLASSES), ids=lambda c: c.__name__)
def test_as_serving_error_keeps_serving_errors(cls: type[ServingError]) -> None:
    error = cls("kept")
    assert as_serving_error(error) is error


@pytest.mark.parametrize(
    "exc",
    [ValueError("bad value"), KeyError("missing"), RuntimeError("boom"), ZeroDivisionError("by zero")],
    ids=lambda e: type(e).__name__,
)
def test_as_serving_error_wraps_foreign_exceptions_as_model_failure(exc: Exception) -> None:
    error = as_serving_error(exc)
    assert isinstance(error, ModelFailure)
    assert error.kind is ErrorKind.MODEL_FAILURE
    assert (error.http_status, error.grpc_code) == (500, grpc.StatusCode.INTERNAL)
    assert error.message == f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("kind", list(ErrorKind), ids=lambda k: k.name)
def test_rest_error_response_uses_the_table(kind: ErrorKind) -> None:
    response = error_response(ServingError(f"{kind.name} happened", kind))
    assert response.status_code == EXPECTED[kind][0]
    assert response.headers["content-type"] == "application/json"
    assert orjson.loads(response.body) == {"error": f"{kind.name} happened"}
