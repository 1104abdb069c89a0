"""The registry's control API (`registry_routes`) driven in process with starlette's TestClient, and
`RegistryClient` over it: every endpoint, every error status, body validation, and a round trip
showing the client and `Registry` itself answer with equal objects. No servers."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from predictors.examples import make_mlp_onnx
from serving.auth import Guard, Principal, Scope, StaticTokens
from serving.client import GatewayUnreachable
from serving.registry import (
    AuditEntry,
    Gate,
    GateFailed,
    ModelVersion,
    RegisteredModel,
    Registry,
    RegistryConfig,
    RegistryConflict,
    RegistryError,
    RegistryNotFound,
)
from serving.registry.api import MAX_BODY_BYTES, registry_routes
from serving.registry.client import RegistryClient

API = "/api/registry"


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return make_mlp_onnx(tmp_path / "src" / "model.onnx", (8, 16, 4))


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    monkeypatch.setenv("SERVEGATE_CACHE_DIR", str(tmp_path / "cache"))
    config = RegistryConfig(f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "artifacts"))
    reg = Registry(config, cache_dir=tmp_path / "cache")
    yield reg
    reg.close()


#: the caller's token: the audit log names it, whatever actor a client claims.
TOKEN = "t-release"
GUARD = Guard(StaticTokens({TOKEN: Principal("release", frozenset(Scope))}))


@pytest.fixture
def http(registry: Registry) -> Iterator[TestClient]:
    headers = {"authorization": f"Bearer {TOKEN}"}
    with TestClient(Starlette(routes=registry_routes(registry, GUARD)), headers=headers) as client:
        yield client


@pytest.fixture
def client(http: TestClient) -> Iterator[RegistryClient]:
    with RegistryClient(http=http) as c:
        yield c


def _register(http: TestClient, source: Path | str, name: str = "mlp", **body: Any) -> dict[str, Any]:
    response = http.post(f"{API}/models/{name}/versions", json={"source": str(source), **body})
    assert response.status_code == 201, response.text
    return response.json()


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    return body["error"]


# -- endpoints ------------------------------------------------------------------------------------


def test_register_returns_201_and_the_version(http: TestClient, model_file: Path) -> None:
    body = _register(
        http,
        model_file,
        metrics={"accuracy": 0.97, "epochs": 3},
        params={"lr": "0.001"},
        tags={"team": "search"},
        description="first",
        run="run-7",
        dataset="abc123",
    )
    assert body["model"] == "mlp" and body["version"] == 1
    assert body["uri"] == "registry://mlp/1"
    assert body["format"] == "onnx" and body["status"] == "READY"
    assert body["metrics"] == {"accuracy": 0.97, "epochs": 3.0}
    assert body["params"] == {"lr": "0.001"} and body["tags"] == {"team": "search"}
    assert body["source"] == {"uri": str(model_file), "run": "run-7", "dataset": "abc123"}
    assert body["description"] == "first"
    assert [i["name"] for i in body["signature"]["inputs"]] == ["input"]
    assert len(body["sha256"]) == 64


def test_list_and_get_models(http: TestClient, model_file: Path) -> None:
    assert http.get(f"{API}/models").json() == {"items": []}
    _register(http, model_file)
    _register(http, model_file, metrics={"accuracy": 0.9})
    _register(http, model_file, name="other")
    items = http.get(f"{API}/models").json()["items"]
    assert [m["name"] for m in items] == ["mlp", "other"]
    assert items[0]["latest_version"] == 2
    model = http.get(f"{API}/models/mlp").json()
    assert model["name"] == "mlp" and model["aliases"] == {} and model["gates"] == []
    assert [v["version"] for v in model["versions"]] == [1, 2]


def test_get_and_archive_a_version(http: TestClient, model_file: Path) -> None:
    _register(http, model_file)
    assert http.get(f"{API}/models/mlp/versions/1").json()["version"] == 1
    archived = http.post(f"{API}/models/mlp/versions/1/archive")
    assert archived.status_code == 200 and archived.json()["status"] == "ARCHIVED"
    assert http.get(f"{API}/models/mlp/versions/1").json()["status"] == "ARCHIVED"


def test_aliases_set_move_delete_and_resolve(http: TestClient, model_file: Path) -> None:
    _register(http, model_file)
    _register(http, model_file)
    model = http.put(f"{API}/models/mlp/aliases/production", json={"version": 1}).json()
    assert model["aliases"] == {"production": 1}
    resolved = http.get(f"{API}/resolve", params={"uri": "registry://mlp@production"}).json()
    assert resolved["version"] == 1 and resolved["aliases"] == ["production"]
    model = http.put(f"{API}/models/mlp/aliases/production", json={"version": 2}).json()
    assert model["aliases"] == {"production": 2}
    assert http.get(f"{API}/resolve", params={"uri": "registry://mlp/1"}).json()["aliases"] == []
    model = http.delete(f"{API}/models/mlp/aliases/production").json()
    assert model["aliases"] == {}


def test_gates(http: TestClient, model_file: Path) -> None:
    _register(http, model_file, metrics={"accuracy": 0.9})
    _register(http, model_file, metrics={"accuracy": 0.97})
    gates = [{"alias": "production", "metric": "accuracy", "op": ">=", "threshold": 0.95}]
    model = http.put(f"{API}/models/mlp/gates", json={"gates": gates}).json()
    assert model["gates"] == gates
    refused = http.put(f"{API}/models/mlp/aliases/production", json={"version": 1})
    assert "accuracy" in _error(refused, 409)
    assert refused.json()["type"] == "GateFailed"
    assert http.put(f"{API}/models/mlp/aliases/production", json={"version": 2}).status_code == 200
    assert http.put(f"{API}/models/mlp/gates", json={"gates": []}).json()["gates"] == []


def test_history_names_the_actor(http: TestClient, model_file: Path) -> None:
    _register(http, model_file)
    http.put(
        f"{API}/models/mlp/aliases/production", json={"version": 1}, headers={"x-servegate-user": "alice"}
    )
    items = http.get(f"{API}/models/mlp/history").json()["items"]
    # The header a caller chooses is not believed: the token's name is the actor.
    assert [(e["action"], e["actor"]) for e in items] == [("registered", "release"), ("alias-set", "release")]
    assert items[1]["details"]["alias"] == "production"


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/models/nope"),
        ("GET", "/models/nope/versions/1"),
        ("GET", "/models/mlp/versions/9"),
        ("POST", "/models/mlp/versions/9/archive"),
        ("DELETE", "/models/mlp/aliases/production"),
        ("GET", "/models/nope/history"),
        ("GET", "/resolve?uri=registry://mlp@production"),
        ("GET", "/resolve?uri=registry://nope/1"),
    ],
)
def test_unknown_things_are_404(http: TestClient, model_file: Path, method: str, path: str) -> None:
    _register(http, model_file)
    response = http.request(method, API + path)
    _error(response, 404)
    assert response.json()["type"] == "RegistryNotFound"


def test_conflicts_are_409(http: TestClient, model_file: Path) -> None:
    _register(http, model_file)
    _register(http, model_file)
    http.put(f"{API}/models/mlp/aliases/production", json={"version": 1})
    assert "alias" in _error(http.post(f"{API}/models/mlp/versions/1/archive"), 409)  # aliased
    http.post(f"{API}/models/mlp/versions/2/archive")
    _error(http.put(f"{API}/models/mlp/aliases/staging", json={"version": 2}), 409)  # archived
    _error(http.put(f"{API}/models/mlp/aliases/production", json={"version": 1}), 409)  # already there


@pytest.mark.parametrize("version", ["abc", "0", "-1", "1.5", "²"])
def test_a_version_must_be_a_positive_integer(http: TestClient, version: str) -> None:
    for method, path in (("GET", ""), ("POST", "/archive")):
        message = _error(http.request(method, f"{API}/models/mlp/versions/{version}{path}"), 400)
        assert "positive integer" in message


@pytest.mark.parametrize(
    "query", ["", "?uri=", "?uri=mlp/1", "?uri=registry://mlp", "?uri=registry://mlp@Prod"]
)
def test_resolve_needs_a_registry_uri(http: TestClient, query: str) -> None:
    _error(http.get(f"{API}/resolve{query}"), 400)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "source"),
        ({"source": 3}, "source"),
        ({"source": "/m.onnx", "metrics": {"accuracy": "high"}}, "metrics.accuracy"),
        ({"source": "/m.onnx", "metrics": {"accuracy": "0.9"}}, "metrics.accuracy"),
        ({"source": "/m.onnx", "metrics": {"accuracy": True}}, "metrics.accuracy"),
        ({"source": "/m.onnx", "metrics": [0.9]}, "metrics"),
        ({"source": "/m.onnx", "params": {"lr": 0.1}}, "params.lr"),
        ({"source": "/m.onnx", "tags": "a=b"}, "tags"),
        ({"source": "/m.onnx", "description": None}, "description"),
        ({"source": "/m.onnx", "colour": "blue"}, "colour"),
        ([], "body"),
    ],
)
def test_register_body_validation(http: TestClient, body: Any, field: str) -> None:
    message = _error(http.post(f"{API}/models/mlp/versions", json=body), 400)
    assert f"{field}:" in message


def test_register_refuses_non_finite_metrics(http: TestClient) -> None:
    content = b'{"source": "/m.onnx", "metrics": {"loss": NaN}}'
    message = _error(http.post(f"{API}/models/mlp/versions", content=content), 400)
    assert "metrics.loss" in message


@pytest.mark.parametrize("source", ["model.onnx", "./m/model.onnx", "model.py:Model", "ftp://host/m.onnx"])
def test_register_needs_a_source_the_gateway_can_read(http: TestClient, source: str) -> None:
    message = _error(http.post(f"{API}/models/mlp/versions", json={"source": source}), 400)
    assert "absolute path" in message


def test_register_reports_a_missing_artifact(http: TestClient, tmp_path: Path) -> None:
    response = http.post(f"{API}/models/mlp/versions", json={"source": str(tmp_path / "missing.onnx")})
    _error(response, 400)
    assert response.json()["type"] == "InvalidArtifact"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "version"),
        ({"version": "2"}, "version"),
        ({"version": 2.0}, "version"),
        ({"version": 0}, "version"),
        ({"version": 1, "force": True}, "force"),
    ],
)
def test_set_alias_body_validation(http: TestClient, body: dict[str, Any], field: str) -> None:
    message = _error(http.put(f"{API}/models/mlp/aliases/production", json=body), 400)
    assert f"{field}:" in message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "gates"),
        ({"gates": {}}, "gates"),
        ({"gates": [{"alias": "production", "metric": "accuracy", "op": ">="}]}, "gates.0.threshold"),
        (
            {"gates": [{"alias": "production", "metric": "accuracy", "op": ">=", "threshold": "high"}]},
            "gates.0.threshold",
        ),
    ],
)
def test_set_gates_body_validation(http: TestClient, body: dict[str, Any], field: str) -> None:
    message = _error(http.put(f"{API}/models/mlp/gates", json=body), 400)
    assert f"{field}:" in message


def test_set_gates_refuses_an_unknown_operator(http: TestClient, model_file: Path) -> None:
    _register(http, model_file)
    gates = [{"alias": "production", "metric": "accuracy", "op": "!=", "threshold": 1}]
    assert "!=" in _error(http.put(f"{API}/models/mlp/gates", json={"gates": gates}), 400)


def test_malformed_json_is_400(http: TestClient) -> None:
    for content in (b"{not json", b"\xff\xfe", b""):
        message = _error(http.post(f"{API}/models/mlp/versions", content=content), 400)
        assert "not valid JSON" in message


def test_a_body_past_the_cap_is_413(http: TestClient) -> None:
    big = json.dumps({"source": "/m.onnx", "description": "x" * MAX_BODY_BYTES}).encode()
    _error(http.post(f"{API}/models/mlp/versions", content=big), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap holds while reading
        yield b'{"source": "/m.onnx", "description": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    _error(http.post(f"{API}/models/mlp/versions", content=chunks()), 413)


def test_unknown_paths_and_methods_answer_json(http: TestClient) -> None:
    _error(http.get(f"{API}/nothing"), 404)
    _error(http.delete(f"{API}/models"), 405)


# -- RegistryClient -------------------------------------------------------------------------------


def test_client_has_the_registry_methods() -> None:
    """The contract: RegistryClient takes what Registry takes, so callers can swap them."""
    for name in (
        "register",
        "set_alias",
        "delete_alias",
        "archive",
        "trust",
        "set_gates",
        "models",
        "model",
        "versions",
        "version",
        "resolve",
        "history",
        "close",
    ):
        ours = inspect.signature(getattr(RegistryClient, name)).parameters
        theirs = inspect.signature(getattr(Registry, name)).parameters
        assert list(ours) == list(theirs), name
        assert [p.kind for p in ours.values()] == [p.kind for p in theirs.values()], name


def test_client_and_registry_answer_with_equal_objects(
    client: RegistryClient, registry: Registry, model_file: Path
) -> None:
    v1 = client.register("mlp", str(model_file), metrics={"accuracy": 0.97}, tags={"a": "b"}, actor="bob")
    assert isinstance(v1, ModelVersion) and v1 == registry.version("mlp", 1)
    v2 = registry.register("mlp", str(model_file), metrics={"accuracy": 0.99})
    gates = [Gate("production", "accuracy", ">=", 0.95)]
    model = client.set_gates("mlp", gates)
    assert isinstance(model, RegisteredModel) and model.gates == tuple(gates)
    assert client.set_alias("mlp", "production", 1) == registry.model("mlp")
    assert client.set_alias("mlp", "staging", 2).aliases == {"production": 1, "staging": 2}
    assert client.delete_alias("mlp", "staging") == registry.model("mlp")
    assert client.models() == registry.models()
    assert client.model("mlp") == registry.model("mlp")
    assert client.versions("mlp") == registry.versions("mlp")
    assert client.version("mlp", 2) == registry.version("mlp", 2) == v2
    assert client.resolve("registry://mlp@production") == registry.resolve("registry://mlp@production")
    archived = client.archive("mlp", 2)
    assert archived.status == "ARCHIVED" and archived == registry.version("mlp", 2)
    history = client.history("mlp")
    assert all(isinstance(e, AuditEntry) for e in history)
    assert history == registry.history("mlp")
    assert history[0].actor == "release"


def test_the_token_is_the_actor_whatever_the_client_says(
    http: TestClient, registry: Registry, model_file: Path
) -> None:
    with RegistryClient(http=http, actor="ci") as c:
        c.register("mlp", str(model_file))
        c.set_alias("mlp", "production", 1, actor="release-bot")
    assert [e.actor for e in registry.history("mlp")] == ["release", "release"]


def _raised(call: Any) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        call()
    return info.value


def test_client_raises_what_the_registry_raises(
    client: RegistryClient, registry: Registry, model_file: Path
) -> None:
    registry.register("mlp", str(model_file), metrics={"accuracy": 0.5})
    registry.register("mlp", str(model_file), metrics={"accuracy": 0.99})
    registry.archive("mlp", 2)
    calls = [
        (lambda r: r.model("nope"), RegistryNotFound),
        (lambda r: r.version("mlp", 7), RegistryNotFound),
        (lambda r: r.resolve("registry://mlp@production"), RegistryNotFound),
        (lambda r: r.resolve("registry://mlp"), RegistryError),
        (lambda r: r.history("nope"), RegistryNotFound),
        (lambda r: r.set_alias("mlp", "production", 2), RegistryConflict),
        (lambda r: r.archive("mlp", 2), RegistryConflict),
        (lambda r: r.set_alias("mlp", "Bad Alias", 1), RegistryError),
        (lambda r: r.register("mlp", "/no/such/model.onnx"), RegistryError),
        (lambda r: r.set_gates("nope", []), RegistryNotFound),
    ]
    for call, cls in calls:
        direct, remote = _raised(lambda c=call: c(registry)), _raised(lambda c=call: c(client))
        assert type(remote) is type(direct) and isinstance(direct, cls), (direct, remote)
        assert str(remote) == str(direct)
        assert remote.status == direct.status
    registry.set_gates("mlp", [Gate("production", "accuracy", ">=", 0.9)])
    with pytest.raises(GateFailed, match="accuracy"):
        client.set_alias("mlp", "production", 1)


def test_client_sends_a_relative_path_as_absolute(
    client: RegistryClient, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(model_file.parent)
    version = client.register("mlp", model_file.name)
    assert version.source["uri"] == str(model_file)


def test_client_paths_and_python_sources() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, json={"error": "no", "type": "RegistryNotFound"})

    with RegistryClient("gateway.test:8080", transport=httpx.MockTransport(answer)) as c:
        assert c.url == "http://gateway.test:8080"
        with pytest.raises(RegistryNotFound):
            c.register("mlp", "model.py:Model", format="python")
        with pytest.raises(RegistryNotFound):
            c.set_alias("a/b", "production", 1)
    body = json.loads(seen[0].content)
    assert body["source"] == f"{Path.cwd() / 'model.py'}:Model"
    assert seen[1].url.raw_path == b"/api/registry/models/a%2Fb/aliases/production"
    assert "x-servegate-user" not in seen[0].headers


@pytest.mark.parametrize(
    ("response", "cls", "status"),
    [
        (httpx.Response(404, json={"error": "gone"}), RegistryNotFound, 404),
        (httpx.Response(409, json={"error": "busy"}), RegistryConflict, 409),
        (httpx.Response(409, json={"error": "gate", "type": "GateFailed"}), GateFailed, 409),
        (httpx.Response(413, json={"error": "too big"}), RegistryError, 413),
        (httpx.Response(502, text="bad gateway"), RegistryError, 502),
        (httpx.Response(404, text="not here"), RegistryNotFound, 404),
        (httpx.Response(400, json={"error": "odd", "type": "KeyError"}), RegistryError, 400),
    ],
)
def test_client_error_classes(response: httpx.Response, cls: type[RegistryError], status: int) -> None:
    transport = httpx.MockTransport(lambda r: response)
    with (
        RegistryClient("http://gateway.test", transport=transport) as c,
        pytest.raises(RegistryError) as info,
    ):
        c.models()
    assert type(info.value) is cls and info.value.status == status


def test_client_refuses_an_answer_that_is_not_an_object() -> None:
    answer = httpx.MockTransport(lambda r: httpx.Response(200, json=[1, 2]))
    with RegistryClient("http://gateway.test", transport=answer) as c, pytest.raises(RegistryError):
        c.models()


def test_client_unreachable_gateway() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    transport = httpx.MockTransport(refuse)
    with (
        RegistryClient("http://gateway.test", transport=transport) as c,
        pytest.raises(GatewayUnreachable) as info,
    ):
        c.models()
    assert "http://gateway.test" in str(info.value)


# -- wire types -----------------------------------------------------------------------------------


def test_from_dict_inverts_as_dict() -> None:
    version = ModelVersion(
        model="mlp",
        version=3,
        format="onnx",
        sha256="ab" * 32,
        artifact_name="model.onnx",
        artifact_kind="file",
        size=1234,
        status="READY",
        created=1700000000.25,
        created_by="alice@host",
        description="d",
        signature={"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}], "outputs": []},
        metrics={"accuracy": 0.97},
        params={"lr": "0.1"},
        tags={"t": "v"},
        source={"uri": "/m.onnx"},
        aliases=("production",),
    )
    model = RegisteredModel(
        "mlp", "", 1.0, 2.0, 3, {"production": 3}, (Gate("production", "accuracy", ">=", 0.9),)
    )
    entry = AuditEntry(1, "mlp", 3.0, "alice", "alias-set", {"alias": "production", "version": 3})
    for obj in (version, model, entry):
        wire = json.loads(json.dumps(obj.as_dict()))
        assert type(obj).from_dict(wire) == obj
    assert Gate.from_dict({"alias": "a", "metric": "m", "op": "<", "threshold": 1}) == Gate(
        "a", "m", "<", 1.0
    )
