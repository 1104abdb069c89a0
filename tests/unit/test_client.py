"""serving.Client against an in-process fake gateway (httpx.MockTransport): URLs per kind, errors,
apply bodies, predict bodies, waiting. No servers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from serving.client import (
    Client,
    GatewayUnreachable,
    Problem,
    ServegateError,
    kind_of,
    plural_of,
)
from tests.servers import ROOT

ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "iris"},
    "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": "/models/mlp"}}},
}
METADATA = {
    "name": "mlp",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
}

Handler = Callable[[httpx.Request], httpx.Response]


class FakeGateway:
    """Answers from a table of (method, path) -> handler; records every request it gets."""

    def __init__(self, routes: dict[tuple[str, str], Handler | dict[str, Any]] | None = None) -> None:
        self.routes = routes or {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get((request.method, request.url.path))
        if route is None:
            return httpx.Response(200, json={"items": [], "results": [], "warnings": [], "message": "ok"})
        return route(request) if callable(route) else httpx.Response(200, json=route)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def client(self) -> Client:
        return Client("http://gateway.test:8080", transport=httpx.MockTransport(self))


@pytest.fixture(autouse=True)
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No token from the machine that runs the tests: no token variables, an empty state dir."""
    for name in ("SERVEGATE_TOKEN", "SERVEGATE_TOKEN_FILE", "SERVEGATE_GRPC_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SERVEGATE_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def fake() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def client(fake: FakeGateway) -> Iterator[Client]:
    with fake.client() as c:
        yield c


def _applied(request: httpx.Request) -> httpx.Response:
    docs = [d for d in yaml.safe_load_all(request.content) if d]
    docs = docs[0]["items"] if docs and docs[0].get("kind") == "List" else docs
    results = [{"kind": d["kind"], "name": d["metadata"]["name"], "action": "created"} for d in docs]
    return httpx.Response(200, json={"results": results, "warnings": []})


# --- kinds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "plural"),
    [
        ("isvc", "inferenceservices"),
        ("InferenceService", "inferenceservices"),
        ("inferenceservice", "inferenceservices"),
        ("inferenceservices", "inferenceservices"),
        ("tm", "trainedmodels"),
        ("TrainedModel", "trainedmodels"),
        ("trainedmodels", "trainedmodels"),
        ("ig", "inferencegraphs"),
        ("InferenceGraph", "inferencegraphs"),
        ("inferencegraph", "inferencegraphs"),
    ],
)
def test_every_spelling_of_a_kind_names_its_plural(spelling: str, plural: str) -> None:
    assert plural_of(spelling) == plural


def test_kind_of_gives_the_manifest_kind() -> None:
    assert [kind_of(k) for k in ("isvc", "tm", "ig")] == [
        "InferenceService",
        "TrainedModel",
        "InferenceGraph",
    ]


def test_an_unknown_kind_is_refused_before_any_request(fake: FakeGateway, client: Client) -> None:
    with pytest.raises(ValueError, match="unknown resource type 'pods'; use isvc, tm or ig"):
        client.get("pods", "x")
    assert fake.requests == []


@pytest.mark.parametrize(
    ("call", "method", "path"),
    [
        (lambda c: c.get("isvc", "iris"), "GET", "/api/v1/inferenceservices/iris"),
        (lambda c: c.list("TrainedModel"), "GET", "/api/v1/trainedmodels"),
        (lambda c: c.delete("ig", "graph"), "DELETE", "/api/v1/inferencegraphs/graph"),
        (lambda c: c.events("inferenceservice", "iris"), "GET", "/api/v1/inferenceservices/iris/events"),
        (lambda c: c.promote("iris"), "POST", "/api/v1/inferenceservices/iris/promote"),
        (lambda c: c.rollback("iris"), "POST", "/api/v1/inferenceservices/iris/rollback"),
    ],
)
def test_each_call_goes_to_its_control_api_path(
    fake: FakeGateway, client: Client, call: Callable[[Client], Any], method: str, path: str
) -> None:
    call(client)
    assert (fake.last.method, fake.last.url.path) == (method, path)


def test_list_and_events_return_the_items() -> None:
    items = [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]
    fake = FakeGateway(
        {
            ("GET", "/api/v1/inferenceservices"): {"items": items},
            ("GET", "/api/v1/inferenceservices/a/events"): {"items": [{"reason": "Created"}]},
        }
    )
    with fake.client() as client:
        assert client.list("isvc") == items
        assert client.events("isvc", "a") == [{"reason": "Created"}]


# --- URLs ------------------------------------------------------------------------------------


def test_the_url_comes_from_the_environment_else_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVEGATE_URL", raising=False)
    with Client() as client:
        assert client.url == "http://127.0.0.1:8080"
    monkeypatch.setenv("SERVEGATE_URL", "http://gw.example:9000/")
    with Client() as client:
        assert client.url == "http://gw.example:9000"
    with Client("localhost:7000") as client:
        assert client.url == "http://localhost:7000"


# --- errors ----------------------------------------------------------------------------------


def test_a_rejected_apply_carries_every_problem() -> None:
    body = {
        "error": "2 problems in the manifests; nothing applied",
        "problems": [
            {"path": "InferenceService/iris: spec.predictor", "message": "give a model"},
            {"path": "TrainedModel/t: spec.inferenceService", "message": "InferenceService 'x' not found"},
        ],
    }
    fake = FakeGateway({("POST", "/api/v1/apply"): lambda r: httpx.Response(400, json=body)})
    with fake.client() as client, pytest.raises(ServegateError) as caught:
        client.apply("kind: InferenceService")
    error = caught.value
    assert (str(error), error.status) == ("2 problems in the manifests; nothing applied", 400)
    assert error.problems == [
        Problem("InferenceService/iris: spec.predictor", "give a model"),
        Problem("TrainedModel/t: spec.inferenceService", "InferenceService 'x' not found"),
    ]
    assert str(error.problems[0]) == "InferenceService/iris: spec.predictor: give a model"


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (
            httpx.Response(404, json={"error": "InferenceService 'x' not found"}),
            "InferenceService 'x' not found",
        ),
        (
            httpx.Response(409, json={"error": "no revision is ready to promote"}),
            "no revision is ready to promote",
        ),
        (httpx.Response(502, text="bad gateway"), "HTTP 502: bad gateway"),
        (httpx.Response(500, json=["not", "an", "error"]), 'HTTP 500: ["not","an","error"]'),
    ],
)
def test_a_non_2xx_answer_raises_the_gateway_message(response: httpx.Response, message: str) -> None:
    fake = FakeGateway({("POST", "/api/v1/inferenceservices/x/promote"): lambda r: response})
    with fake.client() as client, pytest.raises(ServegateError) as caught:
        client.promote("x")
    assert (caught.value.message, caught.value.status, caught.value.problems) == (
        message,
        response.status_code,
        [],
    )


def test_a_gateway_that_refuses_connections_is_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    refusing = Client("http://127.0.0.1:1", transport=httpx.MockTransport(refuse))
    with refusing as client, pytest.raises(GatewayUnreachable) as caught:
        client.list("isvc")
    error = caught.value
    assert isinstance(error, ServegateError)
    assert str(error) == "cannot reach the gateway at http://127.0.0.1:1: [Errno 111] Connection refused"
    assert (error.url, error.status) == ("http://127.0.0.1:1", None)


def test_a_slow_gateway_times_out_with_a_message() -> None:
    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    stalling = Client("http://gw:1", timeout=2, transport=httpx.MockTransport(stall))
    with (
        stalling as client,
        pytest.raises(ServegateError, match=r"GET http://gw:1/api/v1/\S+ timed out after 2s"),
    ):
        client.list("tm")


# --- apply -----------------------------------------------------------------------------------


def test_apply_sends_text_as_it_is_with_its_source() -> None:
    fake = FakeGateway({("POST", "/api/v1/apply"): _applied})
    text = yaml.safe_dump(ISVC)
    with fake.client() as client:
        result = client.apply(text, source="iris.yaml")
    assert fake.last.content == text.encode()
    assert fake.last.url.params["source"] == "iris.yaml"
    assert [str(r) for r in result.results] == ["inferenceservice/iris created"]


def test_apply_dumps_dicts_as_yaml_documents() -> None:
    fake = FakeGateway({("POST", "/api/v1/apply"): _applied})
    other = {**ISVC, "metadata": {"name": "other"}}
    with fake.client() as client:
        client.apply(ISVC)
        assert list(yaml.safe_load_all(fake.last.content)) == [ISVC]
        result = client.apply([ISVC, other])
    assert list(yaml.safe_load_all(fake.last.content)) == [ISVC, other]
    assert "source" not in fake.last.url.params
    assert [(r.kind, r.name, r.action) for r in result.results] == [
        ("InferenceService", "iris", "created"),
        ("InferenceService", "other", "created"),
    ]


def test_apply_returns_the_warnings() -> None:
    answer = {"results": [], "warnings": ["InferenceService/iris: spec.foo: unknown field, ignored"]}
    fake = FakeGateway({("POST", "/api/v1/apply"): answer})
    with fake.client() as client:
        assert client.apply(ISVC).warnings == answer["warnings"]


def test_apply_files_sends_one_file_as_written(tmp_path: Path) -> None:
    path = tmp_path / "iris.yaml"
    path.write_text("# the iris model\n" + yaml.safe_dump(ISVC))
    fake = FakeGateway({("POST", "/api/v1/apply"): _applied})
    with fake.client() as client:
        client.apply_files(path)
    assert fake.last.content == path.read_bytes()
    assert fake.last.url.params["source"] == str(path)


def test_apply_files_sends_several_files_in_one_request(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(ISVC))
    tm = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "TrainedModel", "metadata": {"name": "t"}}
    (tmp_path / "b.json").write_text(json.dumps(tm))
    fake = FakeGateway({("POST", "/api/v1/apply"): _applied})
    with fake.client() as client:
        result = client.apply_files([tmp_path])
    assert len(fake.requests) == 1
    assert json.loads(fake.last.content) == {"apiVersion": "v1", "kind": "List", "items": [ISVC, tm]}
    assert [r.name for r in result.results] == ["iris", "t"]


def test_apply_files_reports_every_unreadable_file_and_sends_nothing(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(ISVC))
    (tmp_path / "bad.yaml").write_text("kind: [unclosed\n")
    fake = FakeGateway()
    with fake.client() as client, pytest.raises(ServegateError) as caught:
        client.apply_files([str(tmp_path), str(tmp_path / "missing.yaml")])
    assert fake.requests == []
    assert caught.value.message == "2 problems reading the manifests; nothing applied"
    paths = [p.path for p in caught.value.problems]
    assert paths == [str(tmp_path / "missing.yaml"), str(tmp_path / "bad.yaml")]


# --- predict ---------------------------------------------------------------------------------


def _echo(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"sent": json.loads(request.content)})


@pytest.fixture
def data_plane() -> FakeGateway:
    return FakeGateway(
        {
            ("GET", "/v2/models/mlp"): METADATA,
            ("POST", "/v2/models/mlp/infer"): _echo,
            ("POST", "/v1/models/mlp:predict"): _echo,
        }
    )


@pytest.mark.parametrize(
    ("data", "body"),
    [
        ([[1, 2], [3, 4]], {"instances": [[1, 2], [3, 4]]}),
        (np.array([[1.5, 2.5]], dtype=np.float32), {"instances": [[1.5, 2.5]]}),
        ({"instances": [[1]], "parameters": {"x": 1}}, {"instances": [[1]], "parameters": {"x": 1}}),
    ],
)
def test_predict_v1_sends_instances_or_the_body_as_given(
    data_plane: FakeGateway, data: Any, body: Any
) -> None:
    with data_plane.client() as client:
        assert client.predict("mlp", data, protocol="v1") == {"sent": body}


def test_predict_v2_builds_the_input_from_the_model_metadata(data_plane: FakeGateway) -> None:
    rows = np.arange(16, dtype=np.int64).reshape(2, 8)
    with data_plane.client() as client:
        sent = client.predict("mlp", rows)["sent"]
    assert [r.url.path for r in data_plane.requests] == ["/v2/models/mlp", "/v2/models/mlp/infer"]
    assert sent == {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [2, 8], "data": [float(x) for x in range(16)]}
        ]
    }


def test_predict_v2_gives_a_single_row_a_batch_dimension(data_plane: FakeGateway) -> None:
    with data_plane.client() as client:
        sent = client.predict("mlp", [0.5] * 8)["sent"]
    assert sent["inputs"][0]["shape"] == [1, 8]


def test_predict_v2_sends_a_request_dict_as_given(data_plane: FakeGateway) -> None:
    request = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [3]}], "id": "r1"}
    with data_plane.client() as client:
        assert client.predict("mlp", request) == {"sent": request}
    assert [r.url.path for r in data_plane.requests] == ["/v2/models/mlp/infer"]


def test_predict_v2_needs_a_dict_for_a_model_of_several_inputs() -> None:
    two = {**METADATA, "inputs": [*METADATA["inputs"], {"name": "mask", "datatype": "BOOL", "shape": [-1]}]}
    fake = FakeGateway({("GET", "/v2/models/mlp"): two})
    with fake.client() as client, pytest.raises(ServegateError, match="model 'mlp' has 2 inputs; pass a V2"):
        client.predict("mlp", [[1.0] * 8])


def test_predict_v2_refuses_data_of_the_wrong_type(data_plane: FakeGateway) -> None:
    with data_plane.client() as client, pytest.raises(ServegateError, match="cannot make a FP32 tensor"):
        client.predict("mlp", [["a", "b"]])


def test_predict_refuses_an_unknown_protocol(data_plane: FakeGateway) -> None:
    with data_plane.client() as client, pytest.raises(ValueError, match="unknown protocol 'v3'"):
        client.predict("mlp", [1], protocol="v3")


def test_model_names_are_quoted_in_paths(fake: FakeGateway, client: Client) -> None:
    client.predict("a/b", {"instances": []}, protocol="v1")
    assert fake.last.url.raw_path == b"/v1/models/a%2Fb:predict"


# --- wait_ready ------------------------------------------------------------------------------


def _isvc_with(ready: bool) -> dict[str, Any]:
    conditions = [
        {"type": "PredictorReady", "status": str(ready), "message": "" if ready else "replica starting"},
        {"type": "Ready", "status": str(ready), "message": "" if ready else "a component is not ready"},
    ]
    return {**ISVC, "status": {"conditions": conditions}}


def test_wait_ready_polls_until_the_ready_condition_is_true() -> None:
    answers = iter([_isvc_with(False), _isvc_with(False), _isvc_with(True)])
    fake = FakeGateway(
        {("GET", "/api/v1/inferenceservices/iris"): lambda r: httpx.Response(200, json=next(answers))}
    )
    seen: list[dict[str, Any]] = []
    with fake.client() as client:
        isvc = client.wait_ready("iris", timeout=10, poll=0, on_poll=seen.append)
    assert isvc == _isvc_with(True)
    assert len(seen) == len(fake.requests) == 3


def test_wait_ready_times_out_with_what_is_not_ready() -> None:
    fake = FakeGateway({("GET", "/api/v1/inferenceservices/iris"): _isvc_with(False)})
    with fake.client() as client, pytest.raises(ServegateError) as caught:
        client.wait_ready("iris", timeout=0.05, poll=0.01)
    assert str(caught.value) == (
        "InferenceService 'iris' not ready after 0.05s: "
        "PredictorReady: replica starting; Ready: a component is not ready"
    )


def test_wait_ready_fails_at_once_for_an_unknown_service() -> None:
    missing = httpx.Response(404, json={"error": "InferenceService 'iris' not found"})
    fake = FakeGateway({("GET", "/api/v1/inferenceservices/iris"): lambda r: missing})
    with fake.client() as client, pytest.raises(ServegateError, match="InferenceService 'iris' not found"):
        client.wait_ready("iris", timeout=30)
    assert len(fake.requests) == 1


# --- tokens ----------------------------------------------------------------------------------

SECRET = "sgt_0123456789ab_secret"


def _token_file(path: Path, token: str = SECRET, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def _authorization(fake: FakeGateway) -> list[str | None]:
    return [r.headers.get("authorization") for r in fake.requests]


def test_the_token_goes_with_every_request(fake: FakeGateway) -> None:
    with Client("http://gateway.test:8080", token=SECRET, transport=httpx.MockTransport(fake)) as client:
        client.list("isvc")
        client.predict("mlp", {"inputs": []}, protocol="v1")
        client.registry.models()  # the registry client shares the HTTP client, headers and all
    assert [r.url.path for r in fake.requests] == [
        "/api/v1/inferenceservices",
        "/v1/models/mlp:predict",
        "/api/registry/models",
    ]
    assert _authorization(fake) == [f"Bearer {SECRET}"] * 3


def test_no_token_sends_no_authorization(fake: FakeGateway, client: Client) -> None:
    client.list("isvc")
    assert _authorization(fake) == [None]


def test_the_token_comes_from_the_environment(fake: FakeGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEGATE_TOKEN", "sgt_from_env")
    with fake.client() as client:
        client.list("isvc")
    with Client("http://gateway.test:8080", token="sgt_given", transport=httpx.MockTransport(fake)) as c:
        c.list("isvc")
    assert _authorization(fake) == ["Bearer sgt_from_env", "Bearer sgt_given"]


def test_the_token_comes_from_a_token_file(
    fake: FakeGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = _token_file(tmp_path / "given.token", "sgt_given_file")
    named = _token_file(tmp_path / "named.token", "sgt_named_file")
    transport = httpx.MockTransport(fake)
    monkeypatch.setenv("SERVEGATE_TOKEN_FILE", str(named))
    with Client("http://gateway.test:8080", token_file=given, transport=transport) as client:
        client.list("isvc")
    with fake.client() as client:
        client.list("isvc")
    assert _authorization(fake) == ["Bearer sgt_given_file", "Bearer sgt_named_file"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "localhost:8080", "http://[::1]:8080"])
def test_the_admin_token_of_a_local_gateway_is_found(fake: FakeGateway, tmp_path: Path, url: str) -> None:
    _token_file(tmp_path / "state" / "admin.token")
    with Client(url, transport=httpx.MockTransport(fake)) as client:
        client.list("isvc")
    assert _authorization(fake) == [f"Bearer {SECRET}"]


def test_the_admin_token_is_found_in_the_working_directory_without_a_state_dir(
    fake: FakeGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SERVEGATE_STATE_DIR")
    monkeypatch.chdir(tmp_path)
    _token_file(tmp_path / ".servegate" / "admin.token")
    with Client("http://127.0.0.1:8080", transport=httpx.MockTransport(fake)) as client:
        client.list("isvc")
    assert _authorization(fake) == [f"Bearer {SECRET}"]


@pytest.mark.parametrize(
    "url", ["http://gateway.test:8080", "http://10.0.0.5:8080", "http://127.0.0.1.nip.io"]
)
def test_the_admin_token_is_never_sent_to_another_host(fake: FakeGateway, tmp_path: Path, url: str) -> None:
    _token_file(tmp_path / "state" / "admin.token")
    with Client(url, transport=httpx.MockTransport(fake)) as client:
        client.list("isvc")
    assert _authorization(fake) == [None]


def test_a_token_file_others_can_read_is_refused(fake: FakeGateway, tmp_path: Path) -> None:
    path = _token_file(tmp_path / "state" / "admin.token", mode=0o644)
    with pytest.raises(ServegateError) as caught:
        Client("http://127.0.0.1:8080", transport=httpx.MockTransport(fake))
    assert str(path) in caught.value.message and "chmod 600" in caught.value.message
    with pytest.raises(ServegateError, match="chmod 600"):
        Client("http://gateway.test:8080", token_file=path, transport=httpx.MockTransport(fake))
    assert fake.requests == []


def test_a_missing_or_empty_token_file_that_was_named_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ServegateError, match="does not exist"):
        Client("http://gateway.test:8080", token_file=tmp_path / "missing.token")
    with pytest.raises(ServegateError, match="holds no token"):
        Client("http://gateway.test:8080", token_file=_token_file(tmp_path / "empty.token", ""))


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://127.3.2.1", True),
        ("https://localhost", True),
        ("[::1]:8081", True),
        ("grpc://127.0.0.1:8081", True),
        ("http://0.0.0.0:8080", False),
        ("http://192.168.1.2:8080", False),
        ("http://localhost.evil.test", False),
        ("http://gateway.test", False),
    ],
)
def test_which_hosts_are_this_machine(url: str, loopback: bool) -> None:
    from serving._credentials import is_loopback

    assert is_loopback(url) is loopback


def test_token_management_calls(fake: FakeGateway) -> None:
    made = {"token": SECRET, "name": "ci", "role": "deployer"}
    fake.routes[("POST", "/api/v1/tokens")] = lambda r: httpx.Response(201, json=made)
    fake.routes[("GET", "/api/v1/tokens")] = {"items": [{"name": "ci"}]}
    fake.routes[("DELETE", "/api/v1/tokens/ci")] = {"name": "ci"}
    with fake.client() as client:
        assert client.create_token("ci", "deployer", namespaces=["a"], expires="30d") == made
        assert client.tokens() == [{"name": "ci"}]
        assert client.revoke_token("ci") == {"name": "ci"}
    assert json.loads(fake.requests[0].content) == {
        "name": "ci",
        "role": "deployer",
        "namespaces": ["a"],
        "services": [],
        "expires": "30d",
    }


def test_an_unauthenticated_answer_is_a_401_error(fake: FakeGateway, client: Client) -> None:
    body = {"error": "this endpoint needs a token: send 'Authorization: Bearer <token>'"}
    fake.routes[("GET", "/api/v1/tokens")] = lambda r: httpx.Response(401, json=body)
    with pytest.raises(ServegateError) as caught:
        client.tokens()
    assert (caught.value.status, caught.value.message) == (401, body["error"])


class FakeTriton:
    """tritonclient.grpc.InferenceServerClient, recording the headers of each call."""

    calls: list[tuple[str, dict[str, str] | None]] = []

    def __init__(self, target: str, **kwargs: Any) -> None:
        self.target = target

    def __enter__(self) -> FakeTriton:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def get_model_metadata(self, name: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        self.calls.append(("metadata", headers))
        return METADATA

    def infer(self, name: str, inputs: Any, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        self.calls.append(("infer", headers))
        result = type("Result", (), {})()
        result.get_response = lambda as_json: {"outputs": [{"name": "output"}]}
        result.as_numpy = lambda name: np.zeros((1, 4), np.float32)
        return result


@pytest.fixture
def triton(monkeypatch: pytest.MonkeyPatch) -> type[FakeTriton]:
    import tritonclient.grpc

    FakeTriton.calls = []
    monkeypatch.setattr(tritonclient.grpc, "InferenceServerClient", FakeTriton)
    return FakeTriton


def test_grpc_predict_sends_the_token_as_metadata(triton: type[FakeTriton]) -> None:
    with Client("http://gateway.test:8080", token=SECRET) as client:
        assert client.predict("mlp", [[0.0] * 8], protocol="grpc") == {"output": [[0.0] * 4]}
    sent = {"authorization": f"Bearer {SECRET}"}
    assert triton.calls == [("metadata", sent), ("infer", sent)]


def test_grpc_predict_sends_the_admin_token_only_to_this_machine(
    triton: type[FakeTriton], tmp_path: Path
) -> None:
    _token_file(tmp_path / "state" / "admin.token")
    with Client("http://127.0.0.1:8080") as client:
        client.predict("mlp", [[0.0] * 8], protocol="grpc")
        client.predict("mlp", [[0.0] * 8], protocol="grpc", grpc_url="gateway.test:8081")
    sent = {"authorization": f"Bearer {SECRET}"}
    assert [headers for _, headers in triton.calls] == [sent, sent, None, None]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("StatusCode.UNAUTHENTICATED", 401),
        ("StatusCode.PERMISSION_DENIED", 403),
        ("StatusCode.NOT_FOUND", None),
    ],
)
def test_a_grpc_refusal_carries_the_status_rest_would(
    triton: type[FakeTriton], monkeypatch: pytest.MonkeyPatch, code: str, status: int | None
) -> None:
    from tritonclient.utils import InferenceServerException

    def refuse(self: FakeTriton, name: str, **kwargs: Any) -> Any:
        raise InferenceServerException(msg="no", status=code)

    monkeypatch.setattr(FakeTriton, "get_model_metadata", refuse)
    with Client("http://gateway.test:8080") as client, pytest.raises(ServegateError) as caught:
        client.predict("mlp", [[0.0] * 8], protocol="grpc")
    assert (caught.value.message, caught.value.status) == ("no", status)


# --- the package -----------------------------------------------------------------------------


def test_importing_serving_leaves_the_client_for_first_use() -> None:
    code = (
        "import sys, serving; assert 'httpx' not in sys.modules and 'serving.client' not in sys.modules; "
        "from serving import Client, ServegateError; import serving.client as c; "
        "assert Client is c.Client and ServegateError is c.ServegateError"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
