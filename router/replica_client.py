"""The gateway's HTTP/1.1 client to its replicas: kept-alive connections, httptools' parser, nothing
else on the request path.

Every request the gateway serves crosses this hop, so it is built for it: the replicas are
servegate's own servers at addresses the engine gave (no names to resolve, no redirects, no
cookies, no TLS), and per request aiohttp's general client spent more of the gateway's CPU than
the routing itself. URLs from manifests (graph steps, payload loggers) keep going through aiohttp
with their address checks (`router.forward.HttpForwarder`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

import httptools

from router.forward import FORWARDED_RESPONSE_HEADERS, HttpReply, Unreachable

__all__ = ["ReplicaClient"]

#: an idle connection older than this is not reused: the replica's server (uvicorn) closes
#: kept-alive connections after 5 s, and a request must not race that close.
IDLE_REUSE_S = 4.0
#: requests between two sweeps of the idle pools.
_SWEEP_EVERY = 1024
_KEPT = frozenset(h.encode() for h in FORWARDED_RESPONSE_HEADERS)


class _Connection(asyncio.Protocol):
    """One kept-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reply: asyncio.Future[HttpReply] | None = None
        self.idle_since = time.monotonic()
        self.answered = False  # whether any byte of the current reply has arrived
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._status = 0

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] - a TCP connection's transport

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Unreachable(f"malformed reply: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(Unreachable(f"connection closed: {exc}" if exc else "connection closed"))

    # -- httptools callbacks --

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _KEPT:
            self._headers[name.decode()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        reply, self.reply = self.reply, None
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        if not self.parser.should_keep_alive():
            self.close()
        if reply is not None and not reply.done():
            reply.set_result(HttpReply(self._status, body, self._headers))

    # -- use --

    def send(self, request: bytes) -> asyncio.Future[HttpReply]:
        self.reply = asyncio.get_running_loop().create_future()
        self.answered = False
        self._headers, self._body, self._status = {}, [], 0
        self.transport.write(request)  # type: ignore[union-attr] - only open connections send
        return self.reply

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def expire(self) -> None:
        """The request's time is up: it fails with TimeoutError, and the connection closes."""
        self._fail(TimeoutError())
        self.close()

    def _fail(self, exc: Exception) -> None:
        reply, self.reply = self.reply, None
        if reply is not None and not reply.done():
            reply.set_exception(exc)


class ReplicaClient:
    """HTTP/1.1 requests to replicas (`http://host:port/...`), on a pool of kept-alive connections
    per address; the same `request` as `HttpForwarder`."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._released = 0

    async def request(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str], timeout: float | None
    ) -> HttpReply:
        host, port, authority, target = _split(url)
        head = [f"{method} {target} HTTP/1.1\r\nhost: {authority}\r\ncontent-length: {len(body or b'')}\r\n"]
        for name, value in headers.items():
            if "\n" in value or "\r" in value:
                raise ValueError(f"header {name} holds a line break")
            head.append(f"{name}: {value}\r\n")
        head.append("\r\n")
        request = "".join(head).encode("latin-1") + (body or b"")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            connection, reused = await self._connection(host, port, deadline)
            # A timer on the loop rather than asyncio.timeout(): this runs for every request.
            timer = None if deadline is None else loop.call_at(deadline, connection.expire)
            try:
                reply = await connection.send(request)
            except Unreachable:
                if reused and not connection.answered:
                    continue  # the replica closed an idle connection as we used it: a new one
                raise Unreachable(f"{url}: the replica closed the connection") from None
            except BaseException:  # timed out or cancelled mid-request: the connection is spent
                connection.close()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            self._release(host, port, connection)
            return reply

    async def _connection(self, host: str, port: int, deadline: float | None) -> tuple[_Connection, bool]:
        idle = self._idle.get((host, port))
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.open and now - connection.idle_since < IDLE_REUSE_S:
                return connection, True
            connection.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                _, connection = await loop.create_connection(_Connection, host, port)
        except OSError as exc:
            raise Unreachable(f"{host}:{port}: {exc.strerror or exc}") from None
        return connection, False

    def _release(self, host: str, port: int, connection: _Connection) -> None:
        if connection.open:
            connection.idle_since = time.monotonic()
            self._idle.setdefault((host, port), []).append(connection)
        self._released += 1
        if self._released % _SWEEP_EVERY == 0:
            self._sweep()

    def _sweep(self) -> None:
        """Drop closed connections, and the addresses left with none: replicas come and go."""
        for address, connections in list(self._idle.items()):
            kept = [c for c in connections if c.open]
            if kept:
                self._idle[address] = kept
            else:
                del self._idle[address]

    async def close(self) -> None:
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


def _split(url: str) -> tuple[str, int, str, str]:
    """(host, port, authority, request target) of an http:// URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"not a replica URL: {url}")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if not (target.isascii() and target.isprintable()) or " " in target:
        # A path parameter the gateway decoded (a model version) may hold any character: escaped,
        # as aiohttp did, so the request line stays one line of ASCII.
        target = quote(target, safe="!#$%&'()*+,/:;=?@[]~")
    return parts.hostname, parts.port or 80, parts.netloc, target
