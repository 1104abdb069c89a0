"""What every servegate REST app (replica and gateway) does alike: bodies read under a size limit,
JSON answers, and errors as `{"error": message}` with the status the error table gives."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from serving.errors import ErrorKind, InvalidInput, PayloadTooLarge, ServingError, as_serving_error

__all__ = [
    "EXCEPTION_HANDLERS",
    "TRACE_HEADERS",
    "error_response",
    "json_response",
    "query_int",
    "read_raw",
    "too_large",
    "validation_problems",
]

log = logging.getLogger(__name__)

#: headers that follow a request through every hop (gateway, transformer, predictor): its id and
#: W3C trace context.
TRACE_HEADERS = ("x-request-id", "traceparent", "tracestate")


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def error_response(error: ServingError) -> Response:
    response = json_response({"error": error.message}, error.http_status)
    if error.kind is ErrorKind.UNAUTHENTICATED:
        response.headers["WWW-Authenticate"] = 'Bearer realm="servegate"'
    return response


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    """The whole number a query parameter gives, `default` when absent; InvalidInput outside
    `low..high` or not a number."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be a whole number from {low} to {high}, not {raw[:40]!r}")
    return value


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds the server's limit of {limit} bytes (--max-body-size)")


def validation_problems(exc: ValidationError) -> str:
    """`field.path: what is wrong; ...` for every error pydantic found in a request body."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "body"
        what = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{where}: {what}")
    return "; ".join(parts)


async def read_raw(request: Request, limit: int) -> bytes:
    """The request body as sent (still encoded), refused past `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _serving_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json_response({"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(as_serving_error(exc))


#: Starlette's `exception_handlers=`: a ServingError in its protocol form, a routing error (404, 405)
#: as JSON, anything else as a logged 500.
EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    ServingError: _serving_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
