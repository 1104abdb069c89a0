"""`servegate token ...` and the token options of every gateway command, through click's CliRunner.
The CLI's `serving.Client` is wired to the real token API in process (Starlette's TestClient over a
TokenStore in tmp_path), so the admin token that `servegate up` would write is found and checked as
on a real machine. No servers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner, Result
from starlette.applications import Starlette
from starlette.testclient import TestClient

from serving.auth import Guard, Role
from serving.auth.api import token_routes
from serving.auth.tokens import TokenStore
from serving.cli.main import cli
from serving.cli.resources import RESOURCE_COMMANDS
from serving.cli.token import ROLES, expiry_text, token_group, token_rows
from serving.errors import Unauthenticated
from tests.cli_results import fails, ok

LOCAL = "http://127.0.0.1:8080"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("SERVEGATE_TOKEN", "SERVEGATE_TOKEN_FILE", "SERVEGATE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SERVEGATE_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def store(state: Path) -> Iterator[TokenStore]:
    state.mkdir()
    store = TokenStore.in_state_dir(state)
    yield store
    store.close()


class Gateway:
    """The token API in process; every `serving.Client` the CLI makes talks to it."""

    def __init__(self, store: TokenStore) -> None:
        self.http = TestClient(Starlette(routes=token_routes(store, Guard(store))))
        self.requests: list[httpx.Request] = []
        self.urls: list[str | None] = []

    def forward(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        headers = {k: v for k, v in request.headers.items() if k in ("authorization", "content-type")}
        answer = self.http.request(request.method, request.url.path, content=request.content, headers=headers)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


@pytest.fixture
def gateway(store: TokenStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    from serving import client as client_module

    gateway = Gateway(store)
    real = client_module.Client

    class Wired(real):  # type: ignore[misc, valid-type]
        def __init__(self, url: str | None = None, timeout: float = 30.0, **kwargs: Any) -> None:
            gateway.urls.append(url)
            super().__init__(url, timeout, transport=httpx.MockTransport(gateway.forward), **kwargs)

    monkeypatch.setattr(client_module, "Client", Wired)
    with gateway.http:
        yield gateway


@pytest.fixture
def admin_file(store: TokenStore, state: Path) -> Path:
    """The admin token `servegate up` writes on its first start."""
    path = state / "admin.token"
    assert store.ensure_admin_file(path)
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["token", *args])


# -- create / list / revoke -----------------------------------------------------------------------


def test_create_prints_the_token_once_on_stdout(
    gateway: Gateway, store: TokenStore, admin_file: Path
) -> None:
    result = run("create", "ci", "--role", "deployer", "--url", LOCAL)
    secret = ok(result).strip()
    assert "\n" not in secret and secret.startswith("sgt_")
    assert "will not be shown again" in result.stderr and secret not in result.stderr
    principal = store.authenticate(secret)
    assert (principal.name, principal.role) == ("ci", Role.DEPLOYER)
    # the admin token of the local state dir was found, and named as the creator
    assert gateway.requests[0].headers["authorization"] == f"Bearer {admin_file.read_text().strip()}"
    assert [t.created_by for t in store.list() if t.name == "ci"] == ["admin"]


def test_create_with_limits_and_expiry(gateway: Gateway, store: TokenStore, admin_file: Path) -> None:
    args = ["--namespace", "a", "--namespace", "b", "--service", "iris", "--expires", "30d"]
    result = run("create", "team", "--role", "predictor", *args)
    ok(result)
    assert "namespaces a, b; services iris, expires in 30d" in result.stderr
    (info,) = [t for t in store.list() if t.name == "team"]
    assert (info.namespaces, info.services) == (("a", "b"), ("iris",))
    assert info.expires == pytest.approx(info.created + 30 * 86400)
    assert gateway.urls == [None]  # --url defaults to SERVEGATE_URL, else the loopback gateway


def test_list_shows_no_secrets(gateway: Gateway, store: TokenStore, admin_file: Path) -> None:
    secret = ok(run("create", "ci", "--role", "viewer", "--expires", "2h")).strip()
    table = ok(run("list"))
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "NAMESPACES", "SERVICES", "CREATED", "BY", "AGE", "EXPIRES"]
    assert lines[1].split()[:5] == ["admin", "admin", "*", "*", "servegate"]
    assert lines[2].split()[:5] == ["ci", "viewer", "*", "*", "admin"]
    assert lines[2].endswith("in 2h") or lines[2].endswith("in 119m")
    as_json = json.loads(ok(run("list", "-o", "json")))
    assert [t["name"] for t in as_json] == ["admin", "ci"]
    as_yaml = yaml.safe_load(ok(run("list", "-o", "yaml")))
    assert as_yaml == as_json
    for text in (table, json.dumps(as_json)):
        assert secret.rsplit("_", 1)[-1] not in text
        assert admin_file.read_text().strip().rsplit("_", 1)[-1] not in text


def test_revoke_stops_the_token_at_once(gateway: Gateway, store: TokenStore, admin_file: Path) -> None:
    secret = ok(run("create", "ci", "--role", "viewer")).strip()
    assert ok(run("revoke", "ci")) == "token 'ci' revoked\n"
    with pytest.raises(Unauthenticated):
        store.authenticate(secret)
    fails(run("revoke", "ci"), 1, "error: no token named 'ci'")


def test_a_name_taken_exits_1(gateway: Gateway, admin_file: Path) -> None:
    ok(run("create", "ci", "--role", "viewer"))
    fails(run("create", "ci", "--role", "admin"), 1, "error: a token named 'ci' exists; revoke it first")


def test_bad_arguments_are_usage_errors_and_send_nothing(gateway: Gateway, admin_file: Path) -> None:
    fails(run("create", "ci", "--role", "boss"), 2, "'boss' is not one of")
    fails(run("create", "ci"), 2, "Missing option '--role'")
    fails(run("create", "ci", "--role", "viewer", "--expires", "soon"), 2, "'soon' is not a duration")
    fails(run("create", "ci", "--role", "viewer", "--expires", "-1d"), 2, "is not a duration")
    assert gateway.requests == []


def test_a_bad_name_is_refused_by_the_gateway(gateway: Gateway, admin_file: Path) -> None:
    fails(run("create", "CI Bot", "--role", "viewer"), 1, "error: name: token name 'CI Bot' must be")


# -- which token ----------------------------------------------------------------------------------


def test_without_a_token_the_error_says_how_to_give_one(gateway: Gateway, store: TokenStore) -> None:
    result = run("list")  # no admin token file in the state dir, no variable
    fails(result, 1, "error: this endpoint needs a token")
    assert "give --token or --token-file, set SERVEGATE_TOKEN" in result.stderr
    assert "authorization" not in gateway.requests[0].headers


def test_the_admin_token_is_not_sent_to_another_host(
    gateway: Gateway, admin_file: Path, store: TokenStore
) -> None:
    fails(run("list", "--url", "http://gateway.test:8080"), 1, "this endpoint needs a token")
    assert "authorization" not in gateway.requests[0].headers
    assert gateway.urls == ["http://gateway.test:8080"]


def test_a_token_given_is_used_wherever_the_gateway_is(
    gateway: Gateway, store: TokenStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, secret = store.create("ops", Role.ADMIN)
    remote = ["--url", "http://gateway.test:8080"]
    ok(run("create", "one", "--role", "viewer", "--token", secret, *remote))
    monkeypatch.setenv("SERVEGATE_TOKEN", secret)
    ok(run("create", "two", "--role", "viewer", *remote))
    monkeypatch.delenv("SERVEGATE_TOKEN")
    token_file = tmp_path / "ops.token"
    token_file.write_text(secret + "\n")
    token_file.chmod(0o600)
    ok(run("create", "three", "--role", "viewer", "--token-file", str(token_file), *remote))
    assert {t.name: t.created_by for t in store.list()} == {
        "one": "ops",
        "two": "ops",
        "three": "ops",
        "ops": "",
    }


def test_a_token_file_others_can_read_is_refused(gateway: Gateway, tmp_path: Path, store: TokenStore) -> None:
    _, secret = store.create("ops", Role.ADMIN)
    token_file = tmp_path / "ops.token"
    token_file.write_text(secret)
    token_file.chmod(0o644)
    fails(run("list", "--token-file", str(token_file)), 1, "chmod 600")
    assert gateway.requests == []


def test_a_token_without_the_admin_role_is_refused(gateway: Gateway, store: TokenStore) -> None:
    _, secret = store.create("dep", Role.DEPLOYER)
    fails(run("list", "--token", secret), 1, "error: token 'dep' (deployer role) may not manage tokens")


def test_every_gateway_command_takes_the_token_options() -> None:
    commands = [*RESOURCE_COMMANDS, *token_group.commands.values()]
    for command in commands:
        flags = {flag for param in command.params for flag in param.opts}
        assert {"--url", "--token", "--token-file"} <= flags, command.name


def test_get_sends_the_token_and_explains_a_401(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving import client as client_module

    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != "Bearer sgt_good":
            return httpx.Response(401, json={"error": "invalid or revoked token"})
        return httpx.Response(200, json={"items": []})

    real = client_module.Client

    class Wired(real):  # type: ignore[misc, valid-type]
        def __init__(self, url: str | None = None, timeout: float = 30.0, **kwargs: Any) -> None:
            super().__init__(url, timeout, transport=httpx.MockTransport(answer), **kwargs)

    monkeypatch.setattr(client_module, "Client", Wired)
    ok(CliRunner().invoke(cli, ["get", "isvc", "--token", "sgt_good"]))
    result = CliRunner().invoke(cli, ["get", "isvc", "--token", "sgt_bad"])
    fails(result, 1, "error: invalid or revoked token (give --token or --token-file")
    assert seen == ["Bearer sgt_good", "Bearer sgt_bad"]


# -- pure helpers ---------------------------------------------------------------------------------


def test_the_roles_offered_are_the_servers() -> None:
    assert tuple(role.value for role in Role) == ROLES


def test_expiry_text() -> None:
    now = 1_700_000_000.0
    assert expiry_text(None, now) == "never"
    assert expiry_text(now + 30 * 86400, now) == "in 30d"
    assert expiry_text(now + 90, now) == "in 90s"
    assert expiry_text(now - 3 * 3600, now) == "expired 3h ago"
    assert expiry_text(now, now) == "expired 0s ago"


def test_token_rows() -> None:
    now = 1_700_000_000.0
    tokens = [
        {
            "name": "ci",
            "role": "deployer",
            "namespaces": ["a", "b"],
            "services": [],
            "created": now - 7200,
            "expires": None,
            "createdBy": "admin",
        }
    ]
    assert token_rows(tokens, now) == [["ci", "deployer", "a,b", "*", "admin", "2h", "never"]]
