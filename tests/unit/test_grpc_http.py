"""Unary gRPC as ASGI (serving.protocol.grpc_http), with no servers: the message framing and its
compression, the `grpc-timeout` header, the status of a call passed on over HTTP/1.1, and the
endpoint driven as an ASGI app with a fake receive/send over HTTP/2 (status in trailers) and
HTTP/1.1 (status in headers, as between servegate's own processes).
"""

from __future__ import annotations

import gzip
import logging
import time
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import grpc
import pytest

from serving.errors import ERROR_TABLE, InferenceTimeout, ModelNotFound, ServingError
from serving.protocol.grpc_http import (
    GrpcCall,
    GrpcEndpoint,
    GrpcError,
    GrpcReply,
    frame,
    grpc_timeout,
    status_of_reply,
    unframe,
)

Code = grpc.StatusCode
PATH = "/inference.GRPCInferenceService/ModelInfer"
LIMIT = 1024


def compressed_frame(data: bytes, encoding: str) -> bytes:
    """One message with the compressed flag set, its bytes compressed per `encoding`."""
    packed = gzip.compress(data) if encoding == "gzip" else zlib.compress(data)
    return b"\x01" + len(packed).to_bytes(4, "big") + packed


def refusal(call: Callable[[], Any]) -> tuple[Code, str]:
    with pytest.raises(GrpcError) as info:
        call()
    return info.value.code, info.value.message


# -- framing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("message", [b"", b"\x00", b"model \xff bytes" * 50])
def test_frame_then_unframe_gives_the_message_back(message: bytes) -> None:
    framed = frame(message)
    assert framed[0] == 0 and int.from_bytes(framed[1:5], "big") == len(message)
    assert unframe(framed) == message
    assert unframe(framed, "gzip", limit=len(message)) == message  # flag 0: the encoding is not used


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00\x00\x00", frame(b"abc")[:-1], frame(b"abc") + b"x", frame(b"one") + frame(b"two")],
    ids=["empty", "short-prefix", "short-message", "trailing-byte", "two-messages"],
)
def test_unframe_refuses_anything_but_exactly_one_message(body: bytes) -> None:
    code, message = refusal(lambda: unframe(body))
    assert code is Code.INVALID_ARGUMENT
    assert "exactly one message" in message


def test_unframe_refuses_a_message_over_the_limit() -> None:
    assert unframe(frame(b"x" * 10), limit=10) == b"x" * 10
    code, message = refusal(lambda: unframe(frame(b"x" * 11), limit=10))
    assert code is Code.RESOURCE_EXHAUSTED
    assert "10 bytes" in message


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_messages_are_inflated(encoding: str) -> None:
    message = b"a tensor's raw bytes " * 40
    assert unframe(compressed_frame(message, encoding), encoding, limit=LIMIT) == message
    assert unframe(compressed_frame(b"", encoding), encoding, limit=LIMIT) == b""


def test_a_compressed_message_over_the_limit_is_refused() -> None:
    body = compressed_frame(b"z" * (LIMIT + 1), "gzip")
    assert len(body) < LIMIT  # small on the wire, too big once inflated
    assert refusal(lambda: unframe(body, "gzip", limit=LIMIT))[0] is Code.RESOURCE_EXHAUSTED


def test_an_unknown_encoding_is_unimplemented() -> None:
    code, message = refusal(lambda: unframe(compressed_frame(b"abc", "gzip"), "snappy", limit=LIMIT))
    assert code is Code.UNIMPLEMENTED
    assert "snappy" in message


@pytest.mark.parametrize(
    "packed",
    [
        b"not gzip at all",
        gzip.compress(b"abc" * 100)[:12],  # cut short inside the stream
        gzip.compress(b"abc" * 100)[:-4],  # cut short before the length check
        gzip.compress(b"abc") + b"trailing garbage",
    ],
    ids=["garbage", "truncated", "no-trailer", "trailing-data"],
)
def test_a_corrupt_gzip_message_is_internal(packed: bytes) -> None:
    body = b"\x01" + len(packed).to_bytes(4, "big") + packed
    code, message = refusal(lambda: unframe(body, "gzip", limit=LIMIT))
    assert code is Code.INTERNAL
    assert "decompress" in message


def test_a_gzip_bomb_is_refused_without_inflating_it() -> None:
    inflated = 64 * 1024 * 1024
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1024 * 1024)
    packed = b"".join(packer.compress(zeros) for _ in range(inflated // len(zeros))) + packer.flush()
    body = b"\x01" + len(packed).to_bytes(4, "big") + packed
    limit = 1024 * 1024
    tracemalloc.start()
    try:
        code, _ = refusal(lambda: unframe(body, "gzip", limit=limit))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code is Code.RESOURCE_EXHAUSTED
    # About the limit's worth is inflated, not the 64 MiB the message holds.
    assert peak < 4 * limit, f"{peak} bytes allocated refusing a {len(packed)}-byte bomb"


# -- grpc-timeout -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("100m", 0.1), ("5S", 5.0), ("1H", 3600.0), ("2M", 120.0), ("10u", 1e-5), ("7n", 7e-9), ("0m", 0.0)],
)
def test_grpc_timeout(value: str, seconds: float) -> None:
    assert grpc_timeout(value) == pytest.approx(seconds, rel=1e-9)


@pytest.mark.parametrize("value", ["", "5", "S", "123456789S", "-1S", "1.5S", "5x", " 5S", "\uff15S", "5s"])
def test_malformed_grpc_timeout_is_invalid_argument(value: str) -> None:
    code, message = refusal(lambda: grpc_timeout(value))
    assert code is Code.INVALID_ARGUMENT
    assert "grpc-timeout" in message


# -- the status of a call passed on over HTTP/1.1 -------------------------------------------------------


@pytest.mark.parametrize(
    ("grpc_status", "code"),
    [("0", Code.OK), ("5", Code.NOT_FOUND), ("14", Code.UNAVAILABLE), ("99", Code.UNKNOWN)],
)
def test_status_of_reply_reads_grpc_status(grpc_status: str, code: Code) -> None:
    text = "model 'ü ✓' is 100% gone"
    headers = {"grpc-status": grpc_status, "grpc-message": "model%20%27%C3%BC%20%E2%9C%93%27 is 100%25 gone"}
    assert status_of_reply(200, headers, b"") == (code, text)
    assert status_of_reply(200, {"grpc-status": grpc_status}, b"") == (code, "")


@pytest.mark.parametrize("http_status", [401, 403, 404, 503])
def test_status_of_reply_without_grpc_status_follows_the_error_table(http_status: int) -> None:
    (code,) = {code for status, code in ERROR_TABLE.values() if status == http_status}
    body = b'{"error": "refused: no token"}'
    assert status_of_reply(http_status, {"content-type": "application/json"}, body) == (
        code,
        "refused: no token",
    )


def test_status_of_reply_outside_the_table_is_unknown() -> None:
    code, message = status_of_reply(418, {}, b"<html>teapot</html>")
    assert code is Code.UNKNOWN
    assert message == "HTTP 418: <html>teapot</html>"


# -- the endpoint as an ASGI app ------------------------------------------------------------------------


@dataclass
class Exchange:
    """One request driven through an ASGI app: what it received and what it sent."""

    events: list[dict[str, Any]]
    sent: list[dict[str, Any]] = field(default_factory=list)
    received: int = 0

    async def receive(self) -> dict[str, Any]:
        event = self.events[min(self.received, len(self.events) - 1)]
        self.received += 1
        return event

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    # -- what was sent --

    @property
    def headers(self) -> dict[str, str]:
        assert self.sent[0]["type"] == "http.response.start" and self.sent[0]["status"] == 200
        return {k.decode(): v.decode() for k, v in self.sent[0]["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m["body"] for m in self.sent if m["type"] == "http.response.body")

    @property
    def status(self) -> tuple[Code, str]:
        """The call's status, from the trailers (HTTP/2) or the headers (HTTP/1.1)."""
        if self.sent[0].get("trailers"):
            assert "grpc-status" not in self.headers
            assert self.sent[-1]["type"] == "http.response.trailers"
            fields = {k.decode(): v.decode() for k, v in self.sent[-1]["headers"]}
        else:
            assert all(m["type"] != "http.response.trailers" for m in self.sent)
            fields = self.headers
        return status_of_reply(200, fields, b"")


def scope(
    http_version: str = "2",
    method: str = "POST",
    path: str = PATH,
    headers: Iterable[tuple[str, str]] = (("content-type", "application/grpc"),),
) -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": http_version,
        "method": method,
        "path": path,
        "headers": [(k.encode(), v.encode("latin-1")) for k, v in headers],
    }


def body_events(body: bytes, chunk: int | None = None) -> list[dict[str, Any]]:
    size = chunk or max(1, len(body))
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    return [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]


class Recorder:
    """A handler that records its calls and answers with `answer(call)`."""

    def __init__(self, answer: Callable[[GrpcCall], Awaitable[GrpcReply]]) -> None:
        self.calls: list[GrpcCall] = []
        self.answer = answer

    async def __call__(self, call: GrpcCall) -> GrpcReply:
        self.calls.append(call)
        return await self.answer(call)


def answering(reply: GrpcReply) -> Recorder:
    async def answer(call: GrpcCall) -> GrpcReply:
        return reply

    return Recorder(answer)


def raising(exc: BaseException) -> Recorder:
    async def answer(call: GrpcCall) -> GrpcReply:
        raise exc

    return Recorder(answer)


async def drive(app: Any, request_scope: dict[str, Any], events: list[dict[str, Any]]) -> Exchange:
    exchange = Exchange(events)
    await app(request_scope, exchange.receive, exchange.send)
    return exchange


HTTP_VERSIONS = pytest.mark.parametrize("http_version", ["2", "1.1"])


@HTTP_VERSIONS
async def test_an_ok_reply(http_version: str) -> None:
    handler = answering(GrpcReply(b"reply bytes", {"x-servegate-revision": "m-predictor-00001"}))
    endpoint = GrpcEndpoint(handler, LIMIT)
    headers = [
        ("content-type", "application/grpc+proto"),
        ("te", "trailers"),
        ("grpc-timeout", "30S"),
        ("grpc-accept-encoding", "gzip"),
        ("authorization", "Bearer t"),
        ("x-user-id", "alice"),
    ]
    before = time.monotonic()
    exchange = await drive(endpoint, scope(http_version, headers=headers), body_events(frame(b"request")))

    (call,) = handler.calls
    assert call.method == "ModelInfer"
    assert call.message == b"request"
    # Transport headers are not the call's metadata.
    assert call.metadata == {"authorization": "Bearer t", "x-user-id": "alice"}
    assert call.invocation_metadata() == (("authorization", "Bearer t"), ("x-user-id", "alice"))
    assert call.deadline is not None and before + 30 <= call.deadline <= time.monotonic() + 30
    assert 0 < call.time_remaining() <= 30  # type: ignore[operator] - a deadline was set

    assert exchange.headers["content-type"] == "application/grpc"
    assert exchange.headers["x-servegate-revision"] == "m-predictor-00001"
    assert exchange.body == frame(b"reply bytes")
    assert exchange.status == (Code.OK, "")
    assert exchange.sent[0].get("trailers", False) is (http_version == "2")


async def test_a_call_without_grpc_timeout_has_no_deadline() -> None:
    handler = answering(GrpcReply(b""))
    await drive(GrpcEndpoint(handler, LIMIT), scope(), body_events(frame(b"")))
    assert handler.calls[0].deadline is None
    assert handler.calls[0].time_remaining() is None


async def test_a_compressed_request_reaches_the_handler_inflated() -> None:
    handler = answering(GrpcReply(b"ok"))
    headers = [("content-type", "application/grpc"), ("grpc-encoding", "gzip")]
    exchange = await drive(
        GrpcEndpoint(handler, LIMIT),
        scope(headers=headers),
        body_events(compressed_frame(b"x" * 500, "gzip")),
    )
    assert handler.calls[0].message == b"x" * 500
    assert "grpc-encoding" not in handler.calls[0].metadata
    assert exchange.status == (Code.OK, "")


@HTTP_VERSIONS
@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (
            GrpcError(Code.FAILED_PRECONDITION, "not now: 'é' ✓ 100%"),
            Code.FAILED_PRECONDITION,
            "not now: 'é' ✓ 100%",
        ),
        (ModelNotFound("model 'm' not found"), Code.NOT_FOUND, "model 'm' not found"),
        (InferenceTimeout("took too long"), Code.DEADLINE_EXCEEDED, "took too long"),
        (ServingError("bad\r\nheader: injected"), Code.INTERNAL, "bad\r\nheader: injected"),
    ],
    ids=["grpc-error", "not-found", "timeout", "line-break"],
)
async def test_a_failing_handler_answers_its_status(
    http_version: str, exc: Exception, code: Code, text: str
) -> None:
    exchange = await drive(GrpcEndpoint(raising(exc), LIMIT), scope(http_version), body_events(frame(b"")))
    assert exchange.status == (code, text)
    assert exchange.body == b""
    # Percent-encoded: a header value holds neither line breaks nor anything outside ASCII.
    raw = [v for m in exchange.sent for k, v in m.get("headers", []) if k == b"grpc-message"]
    assert len(raw) == 1 and raw[0].isascii() and b"\r" not in raw[0] and b"\n" not in raw[0]
    assert unquote(raw[0].decode()) == text


async def test_an_unexpected_exception_is_internal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    endpoint = GrpcEndpoint(raising(RuntimeError("boom")), LIMIT)
    with caplog.at_level(logging.ERROR, logger="serving.protocol.grpc_http"):
        exchange = await drive(endpoint, scope(), body_events(frame(b"")))
    assert exchange.status == (Code.INTERNAL, "RuntimeError: boom")
    (record,) = [r for r in caplog.records if r.name == "serving.protocol.grpc_http"]
    assert PATH in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


async def test_an_expected_failure_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    endpoint = GrpcEndpoint(raising(ModelNotFound("no model")), LIMIT)
    with caplog.at_level(logging.DEBUG, logger="serving.protocol.grpc_http"):
        await drive(endpoint, scope(), body_events(frame(b"")))
    assert not [r for r in caplog.records if r.name == "serving.protocol.grpc_http"]


GRPC_CT = ("content-type", "application/grpc")


@HTTP_VERSIONS
@pytest.mark.parametrize(
    ("request_scope", "body", "code", "words"),
    [
        ({"method": "GET"}, frame(b"abc"), Code.UNIMPLEMENTED, "POST"),
        (
            {"headers": [("content-type", "application/json")]},
            frame(b"abc"),
            Code.INVALID_ARGUMENT,
            "content-type",
        ),
        (
            {"headers": [("content-type", "application/grpc-web+proto")]},
            frame(b"abc"),
            Code.INVALID_ARGUMENT,
            "content-type",
        ),
        ({"headers": [GRPC_CT, ("grpc-timeout", "soon")]}, frame(b"abc"), Code.INVALID_ARGUMENT, "soon"),
        (
            {"headers": [GRPC_CT, ("grpc-encoding", "br")]},
            compressed_frame(b"abc", "gzip"),
            Code.UNIMPLEMENTED,
            "'br'",
        ),
        ({}, frame(b"one") + frame(b"two"), Code.INVALID_ARGUMENT, "exactly one message"),
    ],
    ids=["get", "json", "grpc-web", "bad-timeout", "unknown-encoding", "two-messages"],
)
async def test_a_request_that_is_not_a_call_is_refused(
    http_version: str, request_scope: dict[str, Any], body: bytes, code: Code, words: str
) -> None:
    handler = answering(GrpcReply(b""))
    exchange = await drive(
        GrpcEndpoint(handler, LIMIT), scope(http_version, **request_scope), body_events(body)
    )
    assert handler.calls == []
    got, message = exchange.status
    assert got is code
    assert words in message
    assert exchange.body == b""


@pytest.mark.parametrize(
    "content_type", ["application/grpc", "application/grpc+proto", "application/grpc;x=1"]
)
async def test_grpc_content_types_are_accepted(content_type: str) -> None:
    handler = answering(GrpcReply(b""))
    exchange = await drive(
        GrpcEndpoint(handler, LIMIT), scope(headers=[("content-type", content_type)]), body_events(frame(b""))
    )
    assert exchange.status == (Code.OK, "")


@HTTP_VERSIONS
async def test_a_body_over_the_limit_is_refused_as_it_arrives(http_version: str) -> None:
    handler = answering(GrpcReply(b""))
    endpoint = GrpcEndpoint(handler, 100)
    # A body that never ends: the endpoint stops reading once it is past the limit.
    endless = [{"type": "http.request", "body": b"\x00" * 30, "more_body": True}]
    exchange = await drive(endpoint, scope(http_version), endless)
    assert handler.calls == []
    code, message = exchange.status
    assert code is Code.RESOURCE_EXHAUSTED and "100 bytes" in message
    assert exchange.received == 4  # 120 bytes > 100 + the 5-byte prefix


async def test_a_body_at_the_limit_in_chunks_is_taken() -> None:
    handler = answering(GrpcReply(b"ok"))
    message = bytes(range(100))
    exchange = await drive(GrpcEndpoint(handler, 100), scope(), body_events(frame(message), chunk=7))
    assert handler.calls[0].message == message
    assert exchange.status == (Code.OK, "")


async def test_a_client_gone_mid_body_gets_nothing() -> None:
    handler = answering(GrpcReply(b""))
    events = [
        {"type": "http.request", "body": frame(b"abcdef")[:4], "more_body": True},
        {"type": "http.disconnect"},
    ]
    exchange = await drive(GrpcEndpoint(handler, LIMIT), scope(), events)
    assert handler.calls == []
    assert exchange.sent == []
