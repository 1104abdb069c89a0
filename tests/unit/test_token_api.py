"""The token API (`serving.auth.api`) in process: Starlette's TestClient over a TokenStore on a
SQLite file in tmp_path, with a fake clock. No servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from serving.auth import Guard, Role, Scope, Target
from serving.auth.api import MAX_BODY_BYTES, PREFIX, token_routes
from serving.auth.rest import ScopedRoute, require_scopes
from serving.auth.tokens import TokenStore
from serving.errors import PermissionDenied, Unauthenticated


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[TokenStore]:
    store = TokenStore(f"sqlite:///{tmp_path / 'auth.db'}", clock=clock)
    yield store
    store.close()


@pytest.fixture
def guard(store: TokenStore) -> Guard:
    return Guard(store)


@pytest.fixture
def http(store: TokenStore, guard: Guard) -> Iterator[TestClient]:
    with TestClient(Starlette(routes=token_routes(store, guard))) as client:
        yield client


@pytest.fixture
def admin(store: TokenStore) -> dict[str, str]:
    _, secret = store.create("root", Role.ADMIN, actor="test")
    return {"authorization": f"Bearer {secret}"}


def _create(http: TestClient, admin: dict[str, str], **body: object) -> dict[str, object]:
    response = http.post(PREFIX, json=body, headers=admin)
    assert response.status_code == 201, response.text
    return response.json()


def test_every_route_needs_the_admin_scope(store: TokenStore, guard: Guard) -> None:
    routes = token_routes(store, guard)
    require_scopes(routes)
    assert all(isinstance(r, ScopedRoute) and r.required is Scope.ADMIN for r in routes)


def test_create_list_and_revoke(http: TestClient, admin: dict[str, str], guard: Guard) -> None:
    made = _create(http, admin, name="ci", role="deployer", namespaces=["team-a"], expires="30d")
    secret = made.pop("token")
    assert isinstance(secret, str) and secret.startswith("sgt_")
    assert made["name"] == "ci" and made["role"] == "deployer" and made["namespaces"] == ["team-a"]
    assert made["createdBy"] == "root"
    assert made["expires"] == pytest.approx(made["created"] + 30 * 86400)  # type: ignore[operator]

    listed = http.get(PREFIX, headers=admin)
    assert listed.status_code == 200
    assert [t["name"] for t in listed.json()["items"]] == ["ci", "root"]
    assert secret not in listed.text and secret.rsplit("_", 1)[-1] not in listed.text
    assert all("token" not in t for t in listed.json()["items"])

    assert guard.check(Scope.DEPLOY, f"Bearer {secret}", Target("team-a")).name == "ci"
    revoked = http.delete(f"{PREFIX}/ci", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["name"] == "ci"
    assert [t["name"] for t in http.get(PREFIX, headers=admin).json()["items"]] == ["root"]
    # Refused from the next request on: the store's mirror changed in the same call.
    with pytest.raises(Unauthenticated):
        guard.check(Scope.READ, f"Bearer {secret}")


def test_a_token_keeps_its_limits(http: TestClient, admin: dict[str, str], guard: Guard) -> None:
    secret = _create(http, admin, name="team-a", role="deployer", namespaces=["a"], services=["iris"])[
        "token"
    ]
    header = f"Bearer {secret}"
    assert guard.check(Scope.DEPLOY, header, Target("a", frozenset({"iris"}))).name == "team-a"
    with pytest.raises(PermissionDenied, match="namespace 'b'"):
        guard.check(Scope.DEPLOY, header, Target("b", frozenset({"iris"})))
    with pytest.raises(PermissionDenied, match="'mlp'"):
        guard.check(Scope.DEPLOY, header, Target("a", frozenset({"mlp"})))
    with pytest.raises(PermissionDenied, match="manage tokens"):
        guard.check(Scope.ADMIN, header)


def test_an_expired_token_is_refused(
    http: TestClient, admin: dict[str, str], guard: Guard, clock: Clock
) -> None:
    secret = _create(http, admin, name="short", role="viewer", expires="1h")["token"]
    clock.now += 3599
    assert guard.check(Scope.READ, f"Bearer {secret}").name == "short"
    clock.now += 1
    with pytest.raises(Unauthenticated, match="expired"):
        guard.check(Scope.READ, f"Bearer {secret}")
    # It stays listed (an admin sees why it stopped working) until it is revoked.
    assert "short" in [t["name"] for t in http.get(PREFIX, headers=admin).json()["items"]]


def test_a_token_without_expiry_never_expires(
    http: TestClient, admin: dict[str, str], guard: Guard, clock: Clock
) -> None:
    made = _create(http, admin, name="forever", role="predictor")
    assert made["expires"] is None
    clock.now += 10 * 365 * 86400
    assert guard.check(Scope.INFER, f"Bearer {made['token']}").name == "forever"


ROUTES = [("GET", PREFIX), ("POST", PREFIX), ("DELETE", f"{PREFIX}/root")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_no_token_is_401_and_a_deployer_token_403(
    http: TestClient, store: TokenStore, admin: dict[str, str], method: str, path: str
) -> None:
    body = {"name": "x", "role": "viewer"} if method == "POST" else None
    anonymous = http.request(method, path, json=body)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert "needs a token" in anonymous.json()["error"]

    forged = http.request(method, path, json=body, headers={"authorization": "Bearer sgt_0123456789ab_x"})
    assert forged.status_code == 401

    _, deployer = store.create("dep", Role.DEPLOYER)
    refused = http.request(method, path, json=body, headers={"authorization": f"Bearer {deployer}"})
    assert refused.status_code == 403
    assert refused.json() == {"error": "token 'dep' (deployer role) may not manage tokens or trust"}
    assert [t.name for t in store.list()] == ["dep", "root"]  # nothing made, nothing revoked


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"name": "x", "role": "boss"}, "role: Input should be 'viewer', 'predictor', 'deployer' or 'admin'"),
        ({"name": "x"}, "role: Field required"),
        ({"role": "viewer"}, "name: Field required"),
        ({"name": "x", "role": "viewer", "expires": "soon"}, "expires: 'soon' is not a duration"),
        ({"name": "x", "role": "viewer", "expires": "0d"}, "expires: '0d' is not a duration"),
        ({"name": "x", "role": "viewer", "expires": 30}, "expires: Input should be a valid string"),
        ({"name": "Not A Name", "role": "viewer"}, "name: token name 'Not A Name' must be lower-case"),
        ({"name": "x", "role": "viewer", "namespaces": "a"}, "namespaces: Input should be a valid array"),
        ({"name": "x", "role": "viewer", "services": [""]}, "services.0: String should have at least 1"),
        ({"name": "x", "role": "viewer", "admin": True}, "admin: unknown field"),
        ({"name": 7, "role": "viewer"}, "name: Input should be a valid string"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    http: TestClient, store: TokenStore, admin: dict[str, str], body: dict[str, object], says: str
) -> None:
    response = http.post(PREFIX, json=body, headers=admin)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]
    assert [t.name for t in store.list()] == ["root"]


def test_a_body_that_is_not_json_is_400(http: TestClient, admin: dict[str, str]) -> None:
    response = http.post(PREFIX, content=b"name=x", headers=admin)
    assert response.status_code == 400
    assert "invalid request body" in response.json()["error"]


def test_a_body_too_large_is_413(http: TestClient, admin: dict[str, str]) -> None:
    response = http.post(PREFIX, content=b" " * (MAX_BODY_BYTES + 1), headers=admin)
    assert response.status_code == 413


def test_a_name_taken_is_409(http: TestClient, admin: dict[str, str]) -> None:
    _create(http, admin, name="ci", role="viewer")
    response = http.post(PREFIX, json={"name": "ci", "role": "admin"}, headers=admin)
    assert response.status_code == 409
    assert "a token named 'ci' exists" in response.json()["error"]


def test_revoking_an_unknown_token_is_404(http: TestClient, admin: dict[str, str]) -> None:
    response = http.delete(f"{PREFIX}/nobody", headers=admin)
    assert response.status_code == 404
    assert response.json() == {"error": "no token named 'nobody'"}


def test_the_routes_win_over_a_control_api_mounted_after_them(
    store: TokenStore, guard: Guard, admin: dict[str, str]
) -> None:
    async def plural(request: object) -> JSONResponse:
        return JSONResponse({"error": "unknown resource type"}, 404)

    control = Mount(
        "/api/v1", app=Starlette(routes=[Route("/{plural}", plural), Route("/{plural}/{name}", plural)])
    )
    app = Starlette(routes=[*token_routes(store, guard), control])
    with TestClient(app) as http:
        assert [t["name"] for t in http.get(PREFIX, headers=admin).json()["items"]] == ["root"]
        assert http.delete(f"{PREFIX}/nobody", headers=admin).status_code == 404
        assert http.get("/api/v1/inferenceservices").json() == {"error": "unknown resource type"}
