"""Sending one request to one replica over HTTP (aiohttp, kept-alive connections), REST and gRPC
calls alike (`serving.protocol.grpc_http`), raw bytes both ways: the router never re-encodes a tensor.

A failure to reach the replica (refused, reset, the process died mid-request) is `Unreachable`, so
the caller can retry on another replica; anything the replica answers, errors included, is a reply.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from serving.protocol.rest import TRACE_HEADERS

__all__ = ["AddressCheck", "HttpForwarder", "HttpReply", "Requester", "Unreachable"]

#: request headers passed on to a replica; hop-by-hop ones (connection, host, ...) are not.
FORWARDED_REQUEST_HEADERS = frozenset(
    {"content-type", "content-encoding", "accept-encoding", "inference-header-content-length", *TRACE_HEADERS}
)
#: response headers passed back to the client (a gRPC call's status rides in grpc-status/-message).
FORWARDED_RESPONSE_HEADERS = (
    "content-type",
    "content-encoding",
    "inference-header-content-length",
    "grpc-status",
    "grpc-message",
)


class Unreachable(Exception):
    """The request could not be delivered to (or answered by) the replica; safe to retry elsewhere."""


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Requester(Protocol):
    """What sends a request: `HttpForwarder` here, `router.replica_client.ReplicaClient` to replicas."""

    async def request(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str], timeout: float | None
    ) -> HttpReply: ...

    async def close(self) -> None: ...


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in FORWARDED_REQUEST_HEADERS}


#: the addresses a host may be connected to on a port (raising OSError with why it may not).
AddressCheck = Callable[[str, int], Sequence[Any]]


class _CheckedResolver(AbstractResolver):
    """Resolves a name only to the addresses `check` allows, at every connection: a URL from a
    manifest (a graph step, a payload logger) cannot be pointed at a private address later by
    changing what its name resolves to."""

    def __init__(self, check: AddressCheck) -> None:
        self._check = check

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await asyncio.to_thread(self._check, host, port)
        return [
            ResolveResult(
                hostname=host,
                host=str(ip),
                port=port,
                family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for ip in addresses
        ]

    async def close(self) -> None:
        pass


class HttpForwarder:
    """One aiohttp session: a keep-alive connection pool per host:port. `check`: for URLs from
    manifests, the addresses each host may be reached at (None: any, as for the replicas)."""

    def __init__(self, check: AddressCheck | None = None) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._check = check

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0,
                keepalive_timeout=60,
                # Checked names are resolved (and checked) at every new connection, never cached.
                ttl_dns_cache=None if self._check is None else 0,
                resolver=_CheckedResolver(self._check) if self._check is not None else None,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def request(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str], timeout: float | None
    ) -> HttpReply:
        if self._check is not None:
            await self._check_literal(url)
        try:
            async with self._client().request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                content = await response.read()
                kept = {k: response.headers[k] for k in FORWARDED_RESPONSE_HEADERS if k in response.headers}
                return HttpReply(response.status, content, kept)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.SocketTimeoutError):
                raise
            raise Unreachable(f"{url}: {type(exc).__name__}: {exc}") from exc

    async def _check_literal(self, url: str) -> None:
        # aiohttp connects to an IP address in a URL without asking the resolver: check it here.
        parsed = URL(url)
        try:
            ipaddress.ip_address(parsed.host or "")
        except ValueError:
            return  # a name: the resolver checks it at every connection
        try:
            await asyncio.to_thread(self._check, parsed.host or "", parsed.port or 0)  # type: ignore[misc]
        except OSError as exc:
            raise Unreachable(f"{url}: {exc.strerror or exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
