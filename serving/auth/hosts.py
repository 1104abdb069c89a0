"""DNS-rebinding protection for a server bound to loopback.

A web page can point a name it controls at 127.0.0.1 and then have the browser send requests to a
server on the user's machine, as if from the same origin (Ray's CVE-2026-27482). Such a request
still names the attacker's host in its Host header, so a server that listens only on loopback
answers only requests addressed to a loopback name.

gRPC needs no such check: browsers cannot speak it (no HTTP/2 without TLS, no trailers), and
grpc-python does not show a handler the `:authority` header anyway.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.auth.listen import is_loopback_host

__all__ = ["LoopbackHostMiddleware", "host_name"]

_MESSAGE = (
    "refused: the Host header '{host}' is not a loopback name, and this server listens only on "
    "loopback (protection against DNS rebinding). Address it as localhost, 127.0.0.1 or [::1]; "
    "to serve other names, listen on another address (--host)."
)


#: how many distinct loopback Host headers are remembered (localhost:PORT, 127.0.0.1:PORT, ...).
_REMEMBERED = 64


def host_name(host: str) -> str:
    """The name in a Host header, without its port: `[::1]:8080` -> `[::1]`, `localhost:80` -> `localhost`."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class LoopbackHostMiddleware:
    """Refuses (403, `{"error": ...}`) an HTTP or WebSocket request whose Host header is not a
    loopback name. An HTTP/1.0 request without Host is let through: it cannot come from a browser."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._headers = [(b"content-type", b"application/json")]
        #: Host headers already found to name loopback: the check runs once per value, not per request.
        self._loopback: set[bytes] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = None
        for key, value in scope["headers"]:
            if key == b"host":
                raw = value
                break
        if raw in self._loopback or (raw is None and scope.get("http_version") == "1.0"):
            await self.app(scope, receive, send)
            return
        host = raw.decode("latin-1") if raw is not None else None
        if host is not None and is_loopback_host(host_name(host)):
            if len(self._loopback) < _REMEMBERED:
                self._loopback.add(raw)  # type: ignore[arg-type] - not None here
            await self.app(scope, receive, send)
            return
        await self._refuse(host or "", scope, receive, send)

    async def _refuse(self, host: str, scope: Scope, receive: Receive, send: Send) -> None:
        body = json.dumps({"error": _MESSAGE.format(host=host)}).encode()
        if scope["type"] == "websocket":
            # Closing before accepting makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = [*self._headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})
