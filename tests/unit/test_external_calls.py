"""Calls to URLs that manifests name (InferenceGraph steps, payload loggers) go through the storage
policy at every connection, not only at apply: a name that resolves to a private address later
(DNS rebinding) is still refused, and no request reaches it."""

from __future__ import annotations

import errno
import ipaddress
from pathlib import Path

import pytest

from router.forward import HttpForwarder, Unreachable
from serving.auth.storage import StoragePolicy
from tests.gateway_helpers import HttpSink


async def test_a_loopback_url_is_refused_at_connection_unless_allowed(tmp_path: Path) -> None:
    with HttpSink() as sink:
        port = int(sink.url.rsplit(":", 1)[1])
        refused = HttpForwarder(StoragePolicy((tmp_path,)).connectable)
        allowed = HttpForwarder(StoragePolicy((tmp_path,), (f"127.0.0.1:{port}",)).connectable)
        try:
            with pytest.raises(Unreachable, match="loopback"):
                await refused.request("POST", sink.url + "/step", b"{}", {}, 10.0)
            assert sink.received() == []
            reply = await allowed.request("POST", sink.url + "/step", b"{}", {}, 10.0)
            assert reply.status == 200 and [r.path for r in sink.received()] == ["/step"]
        finally:
            await refused.close()
            await allowed.close()


async def test_a_name_is_checked_again_at_every_connection(tmp_path: Path) -> None:
    # A name that passed once and then resolves to the loopback address (rebinding): refused.
    answers = {"public": ["93.184.216.34"], "now": ["127.0.0.1"]}
    state = {"answer": "now"}
    policy = StoragePolicy((tmp_path,))

    def check(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return policy.addresses(host, port, resolve=lambda _h, _p: answers[state["answer"]])

    def connectable(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        try:
            return check(host, port)
        except Exception as exc:
            raise OSError(errno.EACCES, str(exc)) from None

    with HttpSink() as sink:
        port = int(sink.url.rsplit(":", 1)[1])
        forwarder = HttpForwarder(connectable)
        try:
            with pytest.raises(Unreachable, match=r"resolves to 127\.0\.0\.1"):
                await forwarder.request("POST", f"http://steps.example:{port}/x", b"{}", {}, 10.0)
            assert sink.received() == []
        finally:
            await forwarder.close()
