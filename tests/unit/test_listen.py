"""Where a server may listen (loopback unless authenticated or --insecure), the Host-header check
against DNS rebinding, and the checks of a --tls-cert/--tls-key pair."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.auth.hosts import LoopbackHostMiddleware, host_name
from serving.auth.listen import check_exposure, exposure_warning, is_loopback_host
from serving.auth.tls import client_context, tls_files
from tests.servers import make_certificates


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("localhost.", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.10", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("host", "auth", "insecure", "refused"),
    [
        ("127.0.0.1", False, False, False),
        ("localhost", False, False, False),
        ("::1", False, False, False),
        ("0.0.0.0", False, False, True),
        ("0.0.0.0", True, False, False),
        ("0.0.0.0", False, True, False),
        ("0.0.0.0", True, True, False),
        ("192.168.1.10", False, False, True),
        ("::", False, False, True),
    ],
)
def test_check_exposure(host: str, auth: bool, insecure: bool, refused: bool) -> None:
    message = check_exposure(host, auth, insecure)
    assert (message is not None) is refused
    if message is not None:
        assert host in message
        assert "--insecure" in message
        assert "127.0.0.1" in message


def test_the_refusal_names_the_commands_way_to_turn_authentication_on() -> None:
    message = check_exposure("0.0.0.0", False, False, enable_auth="give --token-file")
    assert message is not None and "give --token-file" in message


def test_only_an_exposed_unauthenticated_server_warns() -> None:
    warning = exposure_warning("0.0.0.0", auth_enabled=False)
    assert warning is not None and "INSECURE" in warning and "0.0.0.0" in warning
    assert exposure_warning("0.0.0.0", auth_enabled=True) is None
    assert exposure_warning("127.0.0.1", auth_enabled=False) is None


# -- the Host header --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost", "localhost"),
        ("localhost:8080", "localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("evil.example:8080", "evil.example"),
    ],
)
def test_host_name_drops_the_port(header: str, name: str) -> None:
    assert host_name(header) == name


def _app() -> Starlette:
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/", hello)], middleware=[Middleware(LoopbackHostMiddleware)])


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example", 403),
        ("evil.example:8080", 403),
        ("localhost.evil.example", 403),
        ("127.0.0.1.nip.io", 403),
        ("testserver", 403),
        ("127.0.0.1:8080", 200),
        ("127.0.0.1", 200),
        ("localhost", 200),
        ("localhost:9000", 200),
        ("[::1]:8080", 200),
    ],
)
def test_a_loopback_server_answers_only_loopback_names(host: str, status: int) -> None:
    with TestClient(_app()) as client:
        response = client.get("/", headers={"host": host})
    assert response.status_code == status
    if status == 403:
        error = response.json()["error"]
        assert "DNS rebinding" in error and "--host" in error and host in error
    else:
        assert response.text == "hello"


def _call(app: Any, http_version: str, headers: list[tuple[bytes, bytes]]) -> int:
    """Drive the ASGI app with one GET; its status."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": http_version,
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def test_http_1_0_without_a_host_header_passes_but_http_1_1_without_one_does_not() -> None:
    app = _app()
    assert _call(app, "1.0", []) == 200
    assert _call(app, "1.1", []) == 403
    assert _call(app, "1.0", [(b"host", b"evil.example")]) == 403


def test_the_gateway_app_checks_hosts_only_when_bound_to_loopback() -> None:
    from router.core import Router
    from router.front.rest import build_gateway_app
    from router.metrics import GatewayMetrics

    for loopback_only, status in ((True, 403), (False, 200)):
        registry = CollectorRegistry()
        app = build_gateway_app(
            Router(GatewayMetrics(registry)), registry, 1 << 20, loopback_only=loopback_only
        )
        with TestClient(app) as client:
            assert client.get("/v2/health/live", headers={"host": "evil.example"}).status_code == status
            assert client.get("/v2/health/live", headers={"host": "127.0.0.1:8080"}).status_code == 200


def test_the_replica_app_checks_hosts_only_when_bound_to_loopback() -> None:
    from predictors.server.replica import Replica, ReplicaOptions
    from predictors.server.rest import build_app

    replica = Replica(ReplicaOptions(), [])
    for loopback_only, status in ((True, 403), (False, 200)):
        app = build_app(replica.dataplane, replica.exposition, 1 << 20, loopback_only=loopback_only)
        with TestClient(app) as client:
            assert client.get("/v2/health/live", headers={"host": "evil.example"}).status_code == status
            assert client.get("/v2/health/live", headers={"host": "localhost"}).status_code == 200


# -- defaults and the CLI -----------------------------------------------------------------------------


def test_servers_listen_on_loopback_by_default() -> None:
    from predictors.server.replica import ReplicaOptions
    from serving.cli._serve import ServeArgs
    from serving.gateway import GatewayOptions

    assert ReplicaOptions().host == "127.0.0.1"
    assert GatewayOptions().host == "127.0.0.1"
    assert ServeArgs(names=("m",), uris=("m.onnx",)).host == "127.0.0.1"


@pytest.mark.parametrize(
    "command", [["model", "serve", "--model-name", "m", "--model-uri", "m.onnx"], ["up"]]
)
def test_the_cli_refuses_an_exposed_unauthenticated_server(command: list[str], tmp_path: Path) -> None:
    from serving.cli.main import cli

    extra = ["--no-auth", "--state-dir", str(tmp_path)] if command == ["up"] else []
    result = CliRunner().invoke(cli, [*command, *extra, "--host", "0.0.0.0"])
    assert result.exit_code == 2, result.output
    assert "--insecure" in result.output and "0.0.0.0" in result.output


def test_serve_args_check_the_exposure_and_the_tls_pair(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from serving.cli._serve import ServeArgs

    model = {"names": ("m",), "uris": ("m.onnx",)}
    with pytest.raises(ValidationError, match="--insecure"):
        ServeArgs(**model, host="0.0.0.0")
    assert ServeArgs(**model, host="0.0.0.0", insecure=True).host == "0.0.0.0"
    assert ServeArgs(**model, host="0.0.0.0", token_file=tmp_path / "tokens").auth_enabled
    with pytest.raises(ValidationError, match="together"):
        ServeArgs(**model, tls_cert=tmp_path / "cert.pem")
    certs = make_certificates(tmp_path / "tls")
    args = ServeArgs(**model, tls_cert=certs.cert, tls_key=certs.key)
    assert args.tls is not None and args.tls.cert == certs.cert


# -- the TLS files ------------------------------------------------------------------------------------


def test_tls_files_are_checked_with_clear_messages(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "tls")
    other = make_certificates(tmp_path / "other")
    assert tls_files(None, None) is None
    files = tls_files(certs.cert, certs.key)
    assert files is not None
    assert files.uvicorn_options() == {"ssl_certfile": str(certs.cert), "ssl_keyfile": str(certs.key)}
    with pytest.raises(ValueError, match="together"):
        tls_files(certs.cert, None)
    with pytest.raises(ValueError, match=r"--tls-key .*missing\.pem: no such readable file"):
        tls_files(certs.cert, tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="cannot use --tls-cert"):
        tls_files(certs.cert, other.key)
    with pytest.raises(ValueError, match="cannot use --tls-cert"):
        tls_files(certs.key, certs.key)


def test_client_context_trusts_the_given_ca(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    assert client_context(None) is True
    context = client_context(certs.ca)
    assert not isinstance(context, bool) and context.cert_store_stats()["x509_ca"] == 1
    with pytest.raises(ValueError, match="cannot read the CA certificate"):
        client_context(tmp_path / "missing.pem")
