"""Unary gRPC calls over HTTP as ASGI endpoints: how the gateway reaches its replicas' RPCs.

gRPC is HTTP/2 with a 5-byte frame around each message, metadata in headers, the deadline in
`grpc-timeout` and the status in trailers (grpc/doc/PROTOCOL-HTTP2.md). The gateway passes calls on
to replicas over the kept-alive HTTP/1.1 connections it uses for REST, which cost a fraction of a
grpcio channel per call; HTTP/1.1 carries no trailers, and a unary call's status is known before
its reply is sent, so there it travels in the response headers (`grpc-status`, `grpc-message`),
the way gRPC's own "trailers-only" replies do. Served over HTTP/2 (an ASGI server with the trailers
extension), an endpoint answers as gRPC has it, status in trailers.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

import grpc

from serving.errors import ERROR_TABLE, as_serving_error

__all__ = [
    "GrpcCall",
    "GrpcEndpoint",
    "GrpcError",
    "GrpcReply",
    "frame",
    "grpc_timeout",
    "status_of_reply",
    "unframe",
]

log = logging.getLogger(__name__)

GRPC = "application/grpc"
ACCEPTED_ENCODINGS = b"identity,deflate,gzip"
#: request headers that are part of gRPC's transport, not the call's metadata.
_TRANSPORT_HEADERS = frozenset(
    {"content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "content-length"}
)
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
#: gRPC status code -> HTTP status, from the one error table (for metrics and retries).
HTTP_BY_CODE = {code: status for status, code in ERROR_TABLE.values()}
CODE_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class GrpcError(Exception):
    """A call's failure with its status code; the message goes to the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(slots=True)
class GrpcCall:
    """One unary call: its method, its request message (unframed, uncompressed), its metadata
    (lower-case keys) and its deadline (time.monotonic(); None: none). It also answers what a
    grpc.aio servicer asks of its context, so servicer methods take it as one."""

    method: str
    message: bytes
    metadata: dict[str, str] = field(default_factory=dict)
    deadline: float | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.metadata.items())

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


@dataclass(frozen=True, slots=True)
class GrpcReply:
    """A call's reply message (serialized) and the initial metadata sent with it."""

    message: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[GrpcCall], Awaitable[GrpcReply]]


def frame(message: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def unframe(body: bytes, encoding: str | None = None, limit: int | None = None) -> bytes:
    """The one message in `body` (decompressed per `encoding` when its flag says so); GrpcError
    when there is not exactly one, or it is over `limit` bytes."""
    if len(body) < 5:
        raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, "a unary call carries exactly one message")
    compressed, length = body[0], int.from_bytes(body[1:5], "big")
    if len(body) != 5 + length:
        raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, "a unary call carries exactly one message")
    message = body[5:]
    if compressed:
        if not encoding or encoding == "identity":  # the spec's answer to a flag without an encoding
            raise GrpcError(grpc.StatusCode.INTERNAL, "a compressed message, but no grpc-encoding")
        message = _decompress(message, encoding, limit)
    if limit is not None and len(message) > limit:
        raise GrpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"message larger than max ({limit} bytes)")
    return message


def _decompress(data: bytes, encoding: str, limit: int | None) -> bytes:
    if encoding not in ("gzip", "deflate"):
        raise GrpcError(grpc.StatusCode.UNIMPLEMENTED, f"message compressed with unsupported {encoding!r}")
    wbits = 31 if encoding == "gzip" else 15
    inflater = zlib.decompressobj(wbits)
    try:
        # At most one byte past the limit: enough to tell it is over, without inflating a bomb.
        message = inflater.decompress(data, (limit + 1) if limit is not None else 0)
    except zlib.error as exc:
        raise GrpcError(grpc.StatusCode.INTERNAL, f"cannot decompress the message: {exc}") from None
    if limit is not None and len(message) > limit:
        raise GrpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"message larger than max ({limit} bytes)")
    if not inflater.eof or inflater.unused_data:
        # zlib inflates a stream cut short to a prefix of the message without complaint.
        raise GrpcError(grpc.StatusCode.INTERNAL, "cannot decompress the message: truncated or trailing data")
    return message


def grpc_timeout(value: str) -> float:
    """A `grpc-timeout` header ("100m", "5S") in seconds; GrpcError when malformed."""
    amount, unit = value[:-1], value[-1:]
    if not (0 < len(amount) <= 8 and amount.isascii() and amount.isdigit()) or unit not in _UNITS:
        raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, f"malformed grpc-timeout {value!r}")
    return int(amount) * _UNITS[unit]


def status_of_reply(status: int, headers: Mapping[str, str], body: bytes) -> tuple[grpc.StatusCode, str]:
    """The status of a call passed on over HTTP/1.1: from `grpc-status`, or, from a server that
    answered before reaching gRPC (a refused token: a JSON error), from the HTTP status."""
    value = headers.get("grpc-status")
    if value is not None and value.isdigit():
        return CODE_BY_VALUE.get(int(value), grpc.StatusCode.UNKNOWN), unquote(
            headers.get("grpc-message", "")
        )
    try:
        message = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode(errors="replace")
    for http, code in ERROR_TABLE.values():
        if http == status:
            return code, message
    return grpc.StatusCode.UNKNOWN, f"HTTP {status}: {message}"


class GrpcEndpoint:
    """An ASGI app answering one unary method with `handler`; requests bigger than
    `max_message_bytes` are refused as they arrive."""

    def __init__(self, handler: Handler, max_message_bytes: int) -> None:
        self.handler = handler
        self.max_message_bytes = max_message_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        http2 = scope.get("http_version") == "2"
        metadata: dict[str, str] = {}
        reply: GrpcReply | None = None
        try:
            call = await self._call(scope, receive, metadata)
            if call is None:
                return  # the client went away
            reply = await self.handler(call)
            code, message = grpc.StatusCode.OK, ""
        except GrpcError as exc:
            code, message = exc.code, exc.message
        except Exception as exc:
            error = as_serving_error(exc)
            if error is not exc:
                log.exception("gRPC %s failed", scope.get("path"))
            code, message = error.grpc_code, error.message
        await _respond(send, http2, code, message, reply)

    async def _call(self, scope: dict, receive: Callable, metadata: dict[str, str]) -> GrpcCall | None:
        if scope.get("method") != "POST":
            raise GrpcError(grpc.StatusCode.UNIMPLEMENTED, "gRPC calls are POST requests")
        deadline = encoding = None
        for raw_key, raw_value in scope["headers"]:
            key, value = raw_key.decode("latin-1"), raw_value.decode("latin-1")
            if key == "content-type":
                # "application/grpc" and its "+proto"-like variants; not gRPC-Web's, which differs.
                if value != GRPC and not value.startswith((GRPC + "+", GRPC + ";")):
                    raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, f"content-type {value!r} is not gRPC")
            elif key == "grpc-timeout":
                deadline = time.monotonic() + grpc_timeout(value)
            elif key == "grpc-encoding":
                encoding = value
            elif key not in _TRANSPORT_HEADERS:
                metadata[key] = value
        limit = self.max_message_bytes
        chunks, size = [], 0
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return None
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > limit + 5:
                raise GrpcError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"message larger than max ({limit} bytes)"
                )
            chunks.append(chunk)
            if not event.get("more_body"):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        method = scope["path"].rsplit("/", 1)[-1]
        return GrpcCall(method, unframe(body, encoding, limit), metadata, deadline)


async def _respond(
    send: Callable, http2: bool, code: grpc.StatusCode, message: str, reply: GrpcReply | None
) -> None:
    headers = [(b"content-type", GRPC.encode()), (b"grpc-accept-encoding", ACCEPTED_ENCODINGS)]
    if reply is not None:
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.metadata.items()]
    status = [(b"grpc-status", str(code.value[0]).encode())]
    if message:
        # Percent-encoded, as the protocol has it: a message may hold any Unicode.
        status.append((b"grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()))
    body = frame(reply.message) if reply is not None and code is grpc.StatusCode.OK else b""
    if not http2:  # HTTP/1.1 between servegate's own processes: the status rides in the headers
        await send({"type": "http.response.start", "status": 200, "headers": headers + status})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": headers, "trailers": True})
    await send({"type": "http.response.body", "body": body})
    await send({"type": "http.response.trailers", "headers": status})
