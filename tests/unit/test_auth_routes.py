"""Every REST route and gRPC method of the gateway and the replica declares a scope, and the scope is
enforced: no token is 401 / UNAUTHENTICATED, a token without the scope 403 / PERMISSION_DENIED, a
token with only that scope gets past the check. The routes are found by walking the apps the way
`servegate up` and a replica build them, so a route added later is tested without anyone listing
it here. Then namespaces through the control API: a team's deployer token cannot see or touch
another team's services, and the audit log names the token.

All in process: Starlette's TestClient for REST, grpc.aio servers on loopback port 0 for gRPC.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.testclient import TestClient
from tritonclient.grpc import service_pb2 as pb

from predictors.examples import make_mlp_onnx
from predictors.server.grpc_service import build_grpc_server
from predictors.server.replica import Replica, ReplicaOptions
from predictors.server.rest import build_app
from router.core import Router
from router.front.grpc import build_gateway_grpc_server
from router.front.rest import build_gateway_app
from router.metrics import GatewayMetrics
from serving.auth import Guard, Principal, Role, Scope, StaticTokens
from serving.auth.grpc import METHOD_SCOPES
from serving.auth.internal import GatewayTokens, InternalCredentials
from serving.auth.rest import ScopedRoute, unscoped
from serving.auth.tokens import TokenStore
from serving.controller.controller import Controller
from serving.dashboard.history import MetricHistory
from serving.dashboard.routes import Dashboard
from serving.engines.process import ProcessEngine
from serving.gateway import gateway_routes
from serving.pipelines.api import StoreOpener, pipeline_routes
from serving.registry.registry import Registry, RegistryConfig
from serving.store import Store

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
#: what fills each path parameter: names nothing that exists, so no request changes anything.
PATH_VALUES = {
    "model_name": "mlp",
    "version": "1",
    "graph_name": "graph",
    "plural": "inferenceservices",
    "name": "nothing-here",
    "alias": "prod",
    "path:path": "app.js",
    "replica": "nothing-here-1",
    "run_id": "no-such-run",
    "step_id": "train",
}
#: scopes the guard opens to everyone.
OPEN = (Scope.HEALTH, Scope.PAGE)
#: the dashboard's "who am I": open to everyone, and it answers 401 to whoever is nobody.
WHO_AM_I = "/api/v1/session"
#: the statuses that mean the guard refused; anything else means the request got past it.
REFUSED = (401, 403)
REFUSED_GRPC = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


# -- tokens: for every scope, one principal with only it and one with everything else ------------


def _has(scope: Scope) -> str:
    return f"has-{scope.value}"


def _lacks(scope: Scope) -> str:
    return f"lacks-{scope.value}"


def _static_guard() -> Guard:
    principals = {}
    for scope in Scope:
        principals[_has(scope)] = Principal(_has(scope), frozenset({scope}))
        principals[_lacks(scope)] = Principal(_lacks(scope), frozenset(Scope) - {scope})
    return Guard(StaticTokens(principals))


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# -- the apps, built as Gateway.run and Replica.run build them ------------------------------------


@dataclass
class GatewayParts:
    app: Starlette
    router: Router
    controller: Controller
    store: Store
    registry: Registry
    tokens: TokenStore

    def close(self) -> None:
        self.registry.close()
        self.tokens.close()
        self.store.close()


def build_gateway(tmp: Path, guard_of: Callable[[TokenStore], Guard]) -> GatewayParts:
    """The gateway's HTTP app over a controller that is never started (no reconciling, no replicas):
    its routes in the order `Gateway.run` puts them (`gateway_routes`)."""
    router = Router(GatewayMetrics(CollectorRegistry()))
    store = Store(tmp / "state.db")
    controller = Controller(store, ProcessEngine(tmp), router, "http://127.0.0.1:1")
    registry = Registry(
        RegistryConfig(url=f"sqlite:///{tmp / 'r.db'}", artifacts=str(tmp / "a")), cache_dir=tmp / "cache"
    )
    controller.registry = registry
    tokens = TokenStore(f"sqlite:///{tmp / 'auth.db'}")
    guard = guard_of(tokens)
    history = MetricHistory(router.metrics.requests, router.metrics.request_seconds, list)
    dashboard = Dashboard(controller, guard, history)
    dashboard.close()  # its live stream then ends after its first event, as at a gateway's shutdown
    pipelines = pipeline_routes(StoreOpener.for_state_dir(tmp), guard, state_dir=tmp)
    routes = gateway_routes(controller, guard, registry, tokens, dashboard, pipelines)
    app = build_gateway_app(
        router, CollectorRegistry(), 1 << 20, routes, guard=guard, targets=lambda: controller.targets
    )
    return GatewayParts(app, router, controller, store, registry, tokens)


def build_replica_app(guard: Guard) -> Starlette:
    replica = Replica(ReplicaOptions(grpc_port=None), [])
    return build_app(replica.dataplane, replica.exposition, 1 << 20, guard=guard, model_control=True)


# -- walking the routes ---------------------------------------------------------------------------


def scoped_routes(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, ScopedRoute]]:
    """(full path, route) for every scoped route, inside mounts too."""
    found = []
    for route in routes:
        if isinstance(route, Mount):
            found += scoped_routes(route.routes, prefix + route.path)
        elif isinstance(route, ScopedRoute):
            found.append((prefix + route.path, route))
    return found


def endpoints(app: Starlette) -> dict[str, tuple[str, str, ScopedRoute]]:
    """`METHOD /path/{param}` -> (method, path, route) for every method of every scoped route."""
    out = {}
    for path, route in scoped_routes(app.routes):
        for method in sorted(route.methods or ()):
            if method != "HEAD":  # Starlette adds HEAD to every GET
                out[f"{method} {path}"] = (method, path, route)
    return out


def concrete(path: str) -> str:
    for param, value in PATH_VALUES.items():
        path = path.replace("{" + param + "}", value)
    assert "{" not in path, f"give the path parameter of {path} a value in PATH_VALUES"
    return path


def matched_route(routes: list[BaseRoute], scope: dict[str, Any]) -> BaseRoute | None:
    """The route Starlette's router sends `scope` to: the first full match, else the first partial."""
    partial = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            if isinstance(route, Mount):
                return matched_route(route.routes, {**scope, **child})
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial


def _endpoints_of(build: Callable[[Path], Starlette]) -> dict[str, tuple[str, str, ScopedRoute]]:
    with tempfile.TemporaryDirectory() as tmp:
        return endpoints(build(Path(tmp)))


def _gateway_endpoints(tmp: Path) -> Starlette:
    parts = build_gateway(tmp, lambda _tokens: _static_guard())
    parts.close()
    return parts.app


GATEWAY_ENDPOINTS = sorted(_endpoints_of(_gateway_endpoints))
REPLICA_ENDPOINTS = sorted(_endpoints_of(lambda _tmp: build_replica_app(_static_guard())))


@pytest.fixture(scope="module")
def gateway_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Starlette]]:
    parts = build_gateway(tmp_path_factory.mktemp("gateway"), lambda _tokens: _static_guard())
    with TestClient(parts.app) as client:
        yield client, parts.app
    parts.close()


@pytest.fixture(scope="module")
def replica_http() -> Iterator[tuple[TestClient, Starlette]]:
    app = build_replica_app(_static_guard())
    with TestClient(app) as client:
        yield client, app


def check_endpoint(client: TestClient, app: Starlette, endpoint: str) -> None:
    method, template, route = endpoints(app)[endpoint]
    path = concrete(template)
    # The request must reach this route, not one declared before it that matches the same path.
    reached = matched_route(app.routes, {"type": "http", "method": method, "path": path, "root_path": ""})
    assert reached is route, f"{method} {path} reaches {getattr(reached, 'path', reached)}, not {template}"
    scope = route.required

    anonymous = client.request(method, path)
    if scope in OPEN:
        assert anonymous.status_code != 403 and (anonymous.status_code != 401 or path == WHO_AM_I), (
            anonymous.text
        )
    else:
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.json()["error"]
        unknown = client.request(method, path, headers=_bearer("no-such-token"))
        assert unknown.status_code == 401, unknown.text
        assert unknown.headers["www-authenticate"].startswith("Bearer")

    lacking = client.request(method, path, headers=_bearer(_lacks(scope)))
    if scope in OPEN:
        assert lacking.status_code not in REFUSED, lacking.text
    else:
        assert lacking.status_code == 403, lacking.text
        assert lacking.headers["content-type"].startswith("application/json")
        assert _lacks(scope) in lacking.json()["error"]

    having = client.request(method, path, headers=_bearer(_has(scope)))
    assert having.status_code not in REFUSED, f"{scope}: {having.status_code} {having.text}"


# -- REST ----------------------------------------------------------------------------------------


def test_the_walk_finds_every_part_of_the_gateway() -> None:
    for endpoint in (
        "POST /v2/models/{model_name}/infer",
        "GET /v2/health/ready",
        "GET /metrics",
        "POST /api/v1/apply",
        "DELETE /api/v1/{plural}/{name}",
        "POST /api/v1/inferenceservices/{name}/promote",
        "GET /api/v1/inferenceservices/{name}/rollout",
        "POST /api/v1/inferenceservices/{name}/rollout/abort",
        "POST /api/registry/models/{name}/versions",
        "GET /api/v1/tokens",
        "DELETE /api/v1/tokens/{name}",
    ):
        assert endpoint in GATEWAY_ENDPOINTS


def test_the_walk_finds_every_part_of_the_replica() -> None:
    for endpoint in (
        "GET /",
        "POST /v2/models/{model_name}/infer",
        "POST /v1/models/{model_name}:predict",
        "GET /metrics",
        "POST /v2/repository/models/{model_name}/load",
    ):
        assert endpoint in REPLICA_ENDPOINTS


def test_no_route_of_either_app_is_unscoped(
    gateway_http: tuple[TestClient, Starlette], replica_http: tuple[TestClient, Starlette]
) -> None:
    assert unscoped(gateway_http[1].routes) == []
    assert unscoped(replica_http[1].routes) == []


def test_every_scope_guards_some_route() -> None:
    used = {route.required for _, _, route in _endpoints_of(_gateway_endpoints).values()}
    assert used == set(Scope)


@pytest.mark.parametrize("endpoint", GATEWAY_ENDPOINTS)
def test_gateway_route_enforces_its_scope(gateway_http: tuple[TestClient, Starlette], endpoint: str) -> None:
    check_endpoint(*gateway_http, endpoint)


@pytest.mark.parametrize("endpoint", REPLICA_ENDPOINTS)
def test_replica_route_enforces_its_scope(replica_http: tuple[TestClient, Starlette], endpoint: str) -> None:
    check_endpoint(*replica_http, endpoint)


def test_the_gateway_refuses_to_build_with_an_unscoped_route(tmp_path: Path) -> None:
    async def endpoint(request: Any) -> Any:
        raise AssertionError("never called")

    router = Router(GatewayMetrics(CollectorRegistry()))
    with pytest.raises(TypeError, match="/api/v1/unguarded"):
        build_gateway_app(router, CollectorRegistry(), 1 << 20, [Route("/api/v1/unguarded", endpoint)])
    mounted = Mount("/api/extra", app=Starlette(routes=[Route("/open", endpoint)]))
    with pytest.raises(TypeError, match="/api/extra/open"):
        build_gateway_app(router, CollectorRegistry(), 1 << 20, [mounted])


# -- gRPC ----------------------------------------------------------------------------------------


def _request(method_name: str) -> bytes:
    """A minimal request of `method_name`'s input type, naming the model "mlp" where it has a name."""
    method = SERVICE.methods_by_name[method_name]
    message = getattr(pb, method.input_type.name)()
    for field in ("model_name", "name"):
        if field in message.DESCRIPTOR.fields_by_name:
            setattr(message, field, "mlp")
    return message.SerializeToString()


async def _code(channel: aio.Channel, method: str, token: str | None) -> grpc.StatusCode:
    call = channel.unary_unary(f"/{SERVICE.full_name}/{method}")
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
    try:
        await call(_request(method), metadata=metadata, timeout=10)
    except aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _codes(server: aio.Server) -> dict[str, tuple[grpc.StatusCode, ...]]:
    """method -> (code without a token, with an unknown one, with a lacking one, with a having one)."""
    async with _serving(server) as port, aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        out = {}
        for method in SERVICE.methods:
            scope = METHOD_SCOPES[method.name]
            tokens = (None, "no-such-token", _lacks(scope), _has(scope))
            out[method.name] = tuple([await _code(channel, method.name, t) for t in tokens])
        return out


@contextlib.asynccontextmanager
async def _serving(server: aio.Server) -> AsyncIterator[int]:
    """The loopback port `server` answers on, while in the block."""
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


def test_every_grpc_method_declares_a_scope() -> None:
    assert {m.name for m in SERVICE.methods} <= set(METHOD_SCOPES)


def _check_grpc(codes: dict[str, tuple[grpc.StatusCode, ...]], served: set[str]) -> None:
    answered = {name for name, found in codes.items() if found[-1] is not grpc.StatusCode.UNIMPLEMENTED}
    assert served <= answered, f"not served: {served - answered}"
    for name, (anonymous, unknown, lacking, having) in codes.items():
        scope = METHOD_SCOPES[name]
        if name not in answered:  # no handler: nothing is served to anyone
            assert (anonymous, unknown, lacking) == (grpc.StatusCode.UNIMPLEMENTED,) * 3, name
        elif scope is Scope.HEALTH:
            assert anonymous not in REFUSED_GRPC and lacking not in REFUSED_GRPC, name
        else:
            assert anonymous is grpc.StatusCode.UNAUTHENTICATED, name
            assert unknown is grpc.StatusCode.UNAUTHENTICATED, name
            assert lacking is grpc.StatusCode.PERMISSION_DENIED, name
        assert having not in REFUSED_GRPC, f"{name} ({scope}): {having}"


async def test_every_gateway_grpc_method_enforces_its_scope() -> None:
    router = Router(GatewayMetrics(CollectorRegistry()))
    try:
        codes = await _codes(build_gateway_grpc_server(router, 1 << 20, _static_guard()))
    finally:
        await router.close()
    served = {"ServerLive", "ServerReady", "ServerMetadata", "RepositoryIndex", "ModelInfer"}
    _check_grpc(codes, served | {"ModelMetadata", "ModelReady", "ModelConfig", "ModelStatistics"})


async def test_every_replica_grpc_method_enforces_its_scope() -> None:
    replica = Replica(ReplicaOptions(grpc_port=None), [])
    server = build_grpc_server(replica.dataplane, 1 << 20, guard=_static_guard(), model_control=True)
    codes = await _codes(server)
    served = {"ServerLive", "ServerReady", "ServerMetadata", "ModelInfer", "ModelMetadata"}
    _check_grpc(codes, served | {"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"})


# -- namespaces through the control API ----------------------------------------------------------


@dataclass
class Team:
    """A gateway with a TokenStore-backed guard, and tokens made in it."""

    http: TestClient
    parts: GatewayParts
    admin: dict[str, str]
    team_a: dict[str, str]
    model: Path


def _isvc(name: str, namespace: str | None, model: Path) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": str(model)}}},
    }


def _apply(http: TestClient, headers: dict[str, str], *manifests: dict[str, Any]) -> Any:
    body = "\n---\n".join(json.dumps(m) for m in manifests)
    return http.post("/api/v1/apply", content=body, headers=headers)


@pytest.fixture
def team(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Team]:
    monkeypatch.setenv("SERVEGATE_CACHE_DIR", str(tmp_path / "cache"))
    model = make_mlp_onnx(tmp_path / "models" / "mlp.onnx", (8, 16, 4))
    parts = build_gateway(tmp_path, lambda tokens: Guard(GatewayTokens(InternalCredentials(), tokens)))
    _, admin = parts.tokens.create("root", Role.ADMIN, actor="test")
    _, team_a = parts.tokens.create("team-a-ci", Role.DEPLOYER, namespaces=["team-a"], actor="test")
    with TestClient(parts.app) as http:
        t = Team(http, parts, _bearer(admin), _bearer(team_a), model)
        for name, namespace in (("alpha", "team-a"), ("beta", "team-b")):
            applied = _apply(http, t.admin, _isvc(name, namespace, model))
            assert applied.status_code == 200, applied.text
        yield t
    parts.close()


def _stored(team: Team, name: str) -> Any:
    return team.parts.store.resource("InferenceService", name)


def test_a_namespaced_deployer_cannot_apply_in_another_namespace(team: Team) -> None:
    refused = _apply(team.http, team.team_a, _isvc("gamma", "team-b", team.model))
    assert refused.status_code == 403, refused.text
    assert "team-b" in refused.json()["error"]
    assert _stored(team, "gamma") is None
    # One document out of bounds refuses the whole request: nothing of it is stored.
    mixed = _apply(
        team.http, team.team_a, _isvc("delta", "team-a", team.model), _isvc("gamma", "team-b", team.model)
    )
    assert mixed.status_code == 403, mixed.text
    assert _stored(team, "delta") is None and _stored(team, "gamma") is None
    # No namespace is the default namespace, which is not team-a's either.
    unnamed = _apply(team.http, team.team_a, _isvc("epsilon", None, team.model))
    assert unnamed.status_code == 403, unnamed.text
    assert _stored(team, "epsilon") is None


def test_a_namespaced_deployer_cannot_take_over_a_name_of_another_namespace(team: Team) -> None:
    moved = _apply(team.http, team.team_a, _isvc("beta", "team-a", team.model))
    assert moved.status_code in (400, 403), moved.text
    assert _stored(team, "beta").manifest["metadata"]["namespace"] == "team-b"


def test_a_namespaced_deployer_applies_in_its_namespace_as_itself(team: Team) -> None:
    applied = _apply(team.http, team.team_a, _isvc("delta", "team-a", team.model))
    assert applied.status_code == 200, applied.text
    assert _stored(team, "delta") is not None
    events = team.http.get("/api/v1/inferenceservices/delta/events", headers=team.team_a)
    assert events.status_code == 200, events.text
    assert [e["actor"] for e in events.json()["items"]] == ["team-a-ci"]
    admin_events = team.http.get("/api/v1/inferenceservices/alpha/events", headers=team.admin)
    assert [e["actor"] for e in admin_events.json()["items"]] == ["root"]


def test_a_namespaced_token_lists_only_its_namespace(team: Team) -> None:
    mine = team.http.get("/api/v1/inferenceservices", headers=team.team_a)
    assert mine.status_code == 200, mine.text
    assert [i["metadata"]["name"] for i in mine.json()["items"]] == ["alpha"]
    everything = team.http.get("/api/v1/inferenceservices", headers=team.admin)
    assert sorted(i["metadata"]["name"] for i in everything.json()["items"]) == ["alpha", "beta"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/inferenceservices/beta"),
        ("GET", "/api/v1/inferenceservices/beta/events"),
        ("DELETE", "/api/v1/inferenceservices/beta"),
        ("POST", "/api/v1/inferenceservices/beta/promote"),
        ("POST", "/api/v1/inferenceservices/beta/rollback"),
    ],
)
def test_a_namespaced_deployer_cannot_touch_another_namespace(team: Team, method: str, path: str) -> None:
    refused = team.http.request(method, path, headers=team.team_a)
    assert refused.status_code == 403, refused.text
    assert "team-b" in refused.json()["error"]
    assert _stored(team, "beta") is not None
    assert [e["reason"] for e in team.parts.controller.events("InferenceService", "beta")] == ["Created"]


def test_a_namespaced_deployer_deletes_in_its_namespace(team: Team) -> None:
    own = team.http.get("/api/v1/inferenceservices/alpha", headers=team.team_a)
    assert own.status_code == 200, own.text
    deleted = team.http.delete("/api/v1/inferenceservices/alpha", headers=team.team_a)
    assert deleted.status_code == 200, deleted.text
    assert _stored(team, "alpha") is None


def test_a_revoked_token_is_refused_at_the_next_request(team: Team) -> None:
    assert team.http.get("/api/v1/inferenceservices", headers=team.team_a).status_code == 200
    revoked = team.http.delete("/api/v1/tokens/team-a-ci", headers=team.admin)
    assert revoked.status_code == 200, revoked.text
    refused = team.http.get("/api/v1/inferenceservices", headers=team.team_a)
    assert refused.status_code == 401, refused.text
    assert refused.headers["www-authenticate"].startswith("Bearer")


def test_only_an_unlimited_token_changes_the_shared_registry(team: Team) -> None:
    # The registry is one for every namespace: a team-a deployer reads it but may not change it.
    refused = team.http.post(
        "/api/registry/models/m/versions", json={"source": str(team.model)}, headers=team.team_a
    )
    assert refused.status_code == 403 and "shared" in refused.json()["error"], refused.text
    assert team.http.get("/api/registry/models", headers=team.team_a).json()["items"] == []


def test_the_registry_history_names_the_token(team: Team) -> None:
    made = team.http.post("/api/v1/tokens", json={"name": "release", "role": "deployer"}, headers=team.admin)
    assert made.status_code == 201, made.text
    release = {"authorization": f"Bearer {made.json()['token']}"}
    registered = team.http.post(
        "/api/registry/models/m/versions",
        json={"source": str(team.model)},
        # A header the caller chooses is not who it is.
        headers={**release, "x-servegate-user": "somebody-else"},
    )
    assert registered.status_code == 201, registered.text
    history = team.http.get("/api/registry/models/m/history", headers=team.team_a)
    assert history.status_code == 200, history.text
    assert [e["actor"] for e in history.json()["items"]] == ["release"]


async def test_a_grpc_call_with_a_revoked_token_is_refused(tmp_path: Path) -> None:
    tokens = TokenStore(f"sqlite:///{tmp_path / 'auth.db'}")
    _, secret = tokens.create("caller", Role.PREDICTOR)
    router = Router(GatewayMetrics(CollectorRegistry()))
    server = build_gateway_grpc_server(router, 1 << 20, Guard(tokens))
    try:
        async with _serving(server) as port, aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await _code(channel, "ServerMetadata", secret) is grpc.StatusCode.OK
            tokens.revoke("caller")
            assert await _code(channel, "ServerMetadata", secret) is grpc.StatusCode.UNAUTHENTICATED
    finally:
        await router.close()
        tokens.close()
