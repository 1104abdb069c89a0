"""The gateway's HTTP/1.1 client to replicas (router.replica_client) against a tiny server written
here on 127.0.0.1: replies framed by length and chunked, the response headers it keeps, kept-alive
connections reused and not reused, a replica closing an idle connection, resets, refusals,
timeouts, and header values that would inject lines.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from router import replica_client
from router.forward import FORWARDED_RESPONSE_HEADERS, Unreachable
from router.replica_client import ReplicaClient, _split


@dataclass
class Received:
    """One request as the server read it, and the connection (by accept order) it came on."""

    connection: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


#: what the server does with a request: a reply's bytes, or one of these.
RESET = "reset"  # abort the connection with a TCP reset, answering nothing
CLOSE = "close"  # close the connection (FIN), answering nothing
HANG = "hang"  # never answer; end when the client goes away


@dataclass(frozen=True)
class Hangup:
    """Write `data` (part of a reply), then close the connection."""

    data: bytes


Action = bytes | str | Hangup


def reply(body: bytes = b"ok", *headers: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class FakeReplica:
    """An HTTP/1.1 server on 127.0.0.1:0 that answers each request with `act(request)`; it counts the
    connections it accepted and keeps every request it read."""

    def __init__(self, act: Callable[[Received], Action] = lambda _: reply()) -> None:
        self.act = act
        self.accepted = 0
        self.received: list[Received] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def hang_up(self, connection: int) -> None:
        """Close the `connection`-th connection from the server's side (a FIN), as an idle one is."""
        self._writers[connection].close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = self.accepted
        self.accepted += 1
        self._writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the client closed the connection
                request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
                method, target, _ = request_line.split(" ")
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Received(connection, method, target, headers, body)
                self.received.append(request)
                action = self.act(request)
                if action == RESET:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if action == CLOSE:
                    writer.close()
                    return
                if action == HANG:
                    await reader.read()
                    return
                if isinstance(action, Hangup):
                    writer.write(action.data)
                    await writer.drain()
                    return  # closed below, after what was written
                assert isinstance(action, bytes)
                writer.write(action)
                await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def replica() -> AsyncIterator[FakeReplica]:
    server = FakeReplica()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[ReplicaClient]:
    c = ReplicaClient()
    yield c
    await c.close()


def script(*actions: Action) -> Callable[[Received], Action]:
    """Answer the n-th request with the n-th action (and the last one after that)."""
    count = 0

    def act(_: Received) -> Action:
        nonlocal count
        count += 1
        return actions[min(count, len(actions)) - 1]

    return act


# -- requests and replies --------------------------------------------------------------------------------


async def test_a_request_as_the_replica_reads_it(replica: FakeReplica, client: ReplicaClient) -> None:
    headers = {
        "content-type": "application/json",
        "traceparent": "00-abc-def-01",
        "authorization": "Bearer t",
    }
    answer = await client.request("POST", replica.url + "/v2/models/m/infer", b'{"x": 1}', headers, 5.0)
    assert (answer.status, answer.body) == (200, b"ok")

    (request,) = replica.received
    assert (request.method, request.target, request.body) == ("POST", "/v2/models/m/infer", b'{"x": 1}')
    assert request.headers == {"host": f"127.0.0.1:{replica.port}", "content-length": "8", **headers}


async def test_a_get_without_a_body(replica: FakeReplica, client: ReplicaClient) -> None:
    await client.request("GET", replica.url + "/v2/models/m", None, {}, 5.0)
    (request,) = replica.received
    assert (request.method, request.target, request.body) == ("GET", "/v2/models/m", b"")
    assert request.headers["content-length"] == "0"


async def test_the_query_string_is_kept(replica: FakeReplica, client: ReplicaClient) -> None:
    await client.request("GET", replica.url + "/v2/models/m?verbose=1&x=%20y", None, {}, 5.0)
    assert replica.received[0].target == "/v2/models/m?verbose=1&x=%20y"
    await client.request("GET", replica.url, None, {}, 5.0)
    assert replica.received[1].target == "/"


async def test_a_chunked_reply(replica: FakeReplica, client: ReplicaClient) -> None:
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    replica.act = script(chunked, reply(b"again"))
    answer = await client.request("POST", replica.url + "/a", b"", {}, 5.0)
    assert (answer.status, answer.body) == (200, b"hello world")
    # The chunked reply ended where it said: the connection carries the next one.
    assert (await client.request("POST", replica.url + "/b", b"", {}, 5.0)).body == b"again"
    assert replica.accepted == 1


async def test_a_large_reply_in_many_reads(replica: FakeReplica, client: ReplicaClient) -> None:
    big = bytes(range(256)) * 16_384  # 4 MiB
    replica.act = script(reply(big))
    answer = await client.request("POST", replica.url + "/a", big, {}, 30.0)
    assert answer.body == big
    assert replica.received[0].body == big


async def test_only_the_forwarded_response_headers_are_kept(
    replica: FakeReplica, client: ReplicaClient
) -> None:
    replica.act = script(
        reply(
            b"{}",
            "Content-Type: application/json",
            "Set-Cookie: a=b",
            "X-Internal: secret",
            "Connection: keep-alive",
            "Grpc-Status: 5",
            "grpc-message: model%20gone",
            "Inference-Header-Content-Length: 2",
            "Date: Thu, 03 Dec 2026 22:24:26 GMT",
        )
    )
    answer = await client.request("POST", replica.url + "/a", b"", {}, 5.0)
    assert answer.headers == {
        "content-type": "application/json",
        "grpc-status": "5",
        "grpc-message": "model%20gone",
        "inference-header-content-length": "2",
    }
    assert set(answer.headers) <= set(FORWARDED_RESPONSE_HEADERS)


async def test_an_error_status_is_a_reply(replica: FakeReplica, client: ReplicaClient) -> None:
    replica.act = script(reply(b'{"error": "no"}', status="503 Service Unavailable"))
    answer = await client.request("POST", replica.url + "/a", b"", {}, 5.0)
    assert (answer.status, answer.body) == (503, b'{"error": "no"}')


@pytest.mark.parametrize(
    ("name", "value"), [("x-user", "a\r\nx-admin: 1"), ("x-user", "a\nb"), ("x-user", "a\rb")]
)
async def test_a_header_value_with_a_line_break_is_refused(
    replica: FakeReplica, client: ReplicaClient, name: str, value: str
) -> None:
    with pytest.raises(ValueError, match=name):
        await client.request("POST", replica.url + "/a", b"", {name: value}, 5.0)
    assert replica.accepted == 0 and replica.received == []


def test_split_reads_host_port_authority_and_target() -> None:
    assert _split("http://127.0.0.1:8000/v2/models/m/infer") == (
        "127.0.0.1",
        8000,
        "127.0.0.1:8000",
        "/v2/models/m/infer",
    )
    assert _split("http://[::1]:9000/v2/x?a=1") == ("::1", 9000, "[::1]:9000", "/v2/x?a=1")
    assert _split("http://[fe80::1]/") == ("fe80::1", 80, "[fe80::1]", "/")
    assert _split("http://replica.local") == ("replica.local", 80, "replica.local", "/")


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/v2/models/m/versions/1 2/infer", "/v2/models/m/versions/1%202/infer"),
        ("/v2/models/m/versions/\u65e5\u00e9/infer", "/v2/models/m/versions/%E6%97%A5%C3%A9/infer"),
        ("/v2/models/m/versions/1\x0b\x00/infer", "/v2/models/m/versions/1%0B%00/infer"),
        ("/v2/models/m/versions/%41/infer?a=b c", "/v2/models/m/versions/%41/infer?a=b%20c"),
    ],
    ids=["space", "non-ascii", "control", "query"],
)
def test_split_escapes_what_a_request_line_cannot_hold(path: str, target: str) -> None:
    assert _split("http://127.0.0.1:8000" + path)[3] == target


async def test_a_decoded_path_parameter_reaches_the_replica_escaped(
    replica: FakeReplica, client: ReplicaClient
) -> None:
    # The gateway builds the path from a model version the client percent-encoded and Starlette decoded.
    answer = await client.request("GET", replica.url + "/v2/models/m/versions/\u65e5 1", None, {}, 5.0)
    assert answer.status == 200
    assert replica.received[0].target == "/v2/models/m/versions/%E6%97%A5%201"


@pytest.mark.parametrize("url", ["https://127.0.0.1:8000/", "ftp://h/x", "http:///path", "127.0.0.1:80"])
def test_split_refuses_what_is_not_a_replica_url(url: str) -> None:
    with pytest.raises(ValueError, match="not a replica URL"):
        _split(url)


# -- kept-alive connections --------------------------------------------------------------------------------


async def test_connections_are_kept_alive_and_reused(replica: FakeReplica, client: ReplicaClient) -> None:
    for i in range(5):
        answer = await client.request("POST", replica.url + f"/{i}", str(i).encode(), {}, 5.0)
        assert answer.body == b"ok"
    assert replica.accepted == 1
    assert [r.connection for r in replica.received] == [0] * 5


async def test_concurrent_requests_take_a_connection_each_then_share_them(
    replica: FakeReplica, client: ReplicaClient
) -> None:
    answers = await asyncio.gather(
        *(client.request("POST", replica.url + "/a", b"", {}, 5.0) for _ in range(3))
    )
    assert [a.body for a in answers] == [b"ok"] * 3
    assert replica.accepted == 3
    for _ in range(3):
        await client.request("POST", replica.url + "/b", b"", {}, 5.0)
    assert replica.accepted == 3


async def test_a_connection_close_reply_is_not_reused(replica: FakeReplica, client: ReplicaClient) -> None:
    replica.act = script(reply(b"first", "connection: close"), reply(b"second"))
    assert (await client.request("POST", replica.url + "/a", b"", {}, 5.0)).body == b"first"
    assert (await client.request("POST", replica.url + "/b", b"", {}, 5.0)).body == b"second"
    assert replica.accepted == 2
    assert [r.connection for r in replica.received] == [0, 1]


async def test_an_http_1_0_reply_is_not_reused(replica: FakeReplica, client: ReplicaClient) -> None:
    replica.act = script(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", reply(b"second"))
    assert (await client.request("POST", replica.url + "/a", b"", {}, 5.0)).body == b"ok"
    assert (await client.request("POST", replica.url + "/b", b"", {}, 5.0)).body == b"second"
    assert replica.accepted == 2


async def test_a_connection_idle_too_long_is_not_reused(
    replica: FakeReplica, client: ReplicaClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.request("POST", replica.url + "/a", b"", {}, 5.0)
    monkeypatch.setattr(replica_client, "IDLE_REUSE_S", 0.0)
    await client.request("POST", replica.url + "/b", b"", {}, 5.0)
    assert replica.accepted == 2


async def test_an_idle_connection_the_replica_closed_is_replaced(
    replica: FakeReplica, client: ReplicaClient
) -> None:
    # The replica answers, then closes the idle connection (as uvicorn does after its keep-alive).
    replica.act = script(reply(b"first"), reply(b"second"))
    await client.request("POST", replica.url + "/a", b"", {}, 5.0)
    replica.hang_up(0)
    await asyncio.sleep(0.05)  # let the close arrive; the race itself is the next test
    assert (await client.request("POST", replica.url + "/b", b"", {}, 5.0)).body == b"second"
    assert replica.accepted == 2


async def test_a_request_racing_the_replica_closing_an_idle_connection_is_sent_again(
    replica: FakeReplica, client: ReplicaClient
) -> None:
    # The kept-alive connection looks open, but the replica closes it as the request arrives,
    # answering nothing: the request goes again, once, on a new connection.
    replica.act = script(reply(b"first"), CLOSE, reply(b"third"))
    await client.request("POST", replica.url + "/a", b"", {}, 5.0)
    answer = await client.request("POST", replica.url + "/b", b"body", {}, 5.0)
    assert answer.body == b"third"
    assert replica.accepted == 2
    assert [(r.connection, r.target) for r in replica.received] == [(0, "/a"), (0, "/b"), (1, "/b")]


async def test_a_reused_connection_closed_after_part_of_a_reply_is_not_sent_again(
    replica: FakeReplica, client: ReplicaClient
) -> None:
    # Part of an answer came: the replica acted on the request, which must not run twice.
    replica.act = script(reply(b"first"), Hangup(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart"))
    await client.request("POST", replica.url + "/a", b"", {}, 5.0)
    with pytest.raises(Unreachable):
        await client.request("POST", replica.url + "/b", b"", {}, 5.0)
    assert len(replica.received) == 2
    assert replica.accepted == 1


# -- failures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", [RESET, CLOSE])
async def test_a_new_connection_dropped_mid_request_is_unreachable(
    replica: FakeReplica, client: ReplicaClient, action: str
) -> None:
    replica.act = script(action)
    with pytest.raises(Unreachable, match=str(replica.port)):
        await client.request("POST", replica.url + "/a", b"x" * 1000, {}, 5.0)
    assert len(replica.received) == 1  # tried once: a fresh connection is not retried


async def test_a_refused_port_is_unreachable(client: ReplicaClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(Unreachable, match=f"127.0.0.1:{port}"):
            await client.request("POST", f"http://127.0.0.1:{port}/a", b"", {}, 5.0)


async def test_a_malformed_reply_is_unreachable(replica: FakeReplica, client: ReplicaClient) -> None:
    replica.act = script(b"SMTP ready\r\n\r\n", reply(b"fine"))
    with pytest.raises(Unreachable):
        await client.request("POST", replica.url + "/a", b"", {}, 5.0)
    assert (await client.request("POST", replica.url + "/b", b"", {}, 5.0)).body == b"fine"
    assert replica.accepted == 2


async def test_a_timeout_spends_the_connection(replica: FakeReplica, client: ReplicaClient) -> None:
    replica.act = lambda request: HANG if request.target == "/slow" else reply(b"next")
    with pytest.raises(TimeoutError):
        await client.request("POST", replica.url + "/slow", b"", {}, 0.5)
    # Whatever comes late on that connection must not be read as the next request's answer.
    assert (await client.request("POST", replica.url + "/next", b"", {}, 5.0)).body == b"next"
    slow = {r.connection for r in replica.received if r.target == "/slow"}
    (after,) = [r.connection for r in replica.received if r.target == "/next"]
    assert after not in slow


async def test_a_cancelled_request_spends_the_connection(replica: FakeReplica, client: ReplicaClient) -> None:
    replica.act = script(HANG, reply(b"later"))
    task = asyncio.create_task(client.request("POST", replica.url + "/slow", b"", {}, None))
    while not replica.received:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await client.request("POST", replica.url + "/next", b"", {}, 5.0)).body == b"later"
    assert replica.accepted == 2


async def test_close_closes_idle_connections(replica: FakeReplica, client: ReplicaClient) -> None:
    await client.request("POST", replica.url + "/a", b"", {}, 5.0)
    await client.close()
    await client.request("POST", replica.url + "/b", b"", {}, 5.0)
    assert replica.accepted == 2
