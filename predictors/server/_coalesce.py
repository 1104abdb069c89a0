"""uvicorn's HTTP/1.1 protocol with its writes coalesced: a response goes out in one send.

uvicorn writes a response's head and its body with two `transport.write` calls, so every response
costs two system calls and, with Nagle off, two TCP segments: the reader wakes up twice, once for a
head it cannot use yet. Writes made within one turn of the event loop are joined here and sent once
at the end of that turn. On loopback, where the gateway and its replicas talk, that is a measurable
share of the router hop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol"]


class _CoalescingTransport:
    """A transport whose writes within one event-loop turn are sent together; everything else is
    the wrapped transport's."""

    __slots__ = ("_buffer", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        buffer, self._buffer = self._buffer, []
        if buffer and not self._transport.is_closing():
            self._transport.write(buffer[0] if len(buffer) == 1 else b"".join(buffer))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(data) for data in self._buffer)

    def close(self) -> None:
        self._flush()  # what was written before close goes out first
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a coalescing transport."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        wrapped = _CoalescingTransport(transport, self.loop)  # type: ignore[arg-type] - a TCP transport
        super().connection_made(wrapped)  # type: ignore[arg-type] - it quacks like one
