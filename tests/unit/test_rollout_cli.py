"""A service's rollout through the control API, `serving.Client` and `servegate rollout`: the routes
in process (Starlette's TestClient) over a controller that is never started, whose `rollouts` is a
fake answering as `serving.controller.rollouts.Rollouts` does; the client and the CLI wired to
them through httpx's MockTransport. No servers."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner, Result
from starlette.applications import Starlette
from starlette.testclient import TestClient

from serving.api import api_routes
from serving.auth import Guard, Principal, Role, StaticTokens
from serving.cli.main import cli
from serving.cli.rollout import (
    check_rows,
    figures_text,
    rollout_group,
    span,
    stage_rows,
    stage_text,
    status_fields,
)
from serving.client import Client, ServegateError
from serving.controller.controller import Controller, NotFound
from serving.store import Store
from tests.cli_results import fails, ok

URL = "http://gateway.test:8080"
CANARY, STABLE = "iris-predictor-00002", "iris-predictor-00001"
#: token -> who presents it: a viewer, a deployer, and a deployer of another team's namespace.
TOKENS = {
    "viewer-token": Principal.of_role("dashboard", Role.VIEWER),
    "deployer-token": Principal.of_role("ci", Role.DEPLOYER),
    "other-team-token": Principal.of_role("team-b-ci", Role.DEPLOYER, namespaces=frozenset({"team-b"})),
}
#: iris, at the second of four stages, as `Rollouts.status` answers.
STATUS: dict[str, Any] = {
    "service": "iris",
    "canary": CANARY,
    "stable": STABLE,
    "state": "running",
    "stage": 1,
    "stages": [
        {"kind": "shadow", "percent": 10, "holdSeconds": 60.0},
        {"kind": "live", "percent": 25, "holdSeconds": 120.0},
        {"kind": "live", "percent": 50, "holdSeconds": 120.0},
        {"kind": "live", "percent": 100, "holdSeconds": 0.0},
    ],
    "stageStarted": 1000.0,
    "traffic": {"live": 25, "shadow": 0},
    "failures": 1,
    "failureBudget": 3,
    "reason": "25% live: judging",
    "checks": [
        {
            "check": "error-rate",
            "outcome": "pass",
            "figures": {
                "canaryRate": 0.0083333,
                "stableRate": 0.01,
                "canaryRequests": 120,
                "stableRequests": 100,
            },
            "pValue": 0.61234,
            "message": "canary 0.83% (1/120) vs stable 1.00% (1/100): not worse (p=0.61)",
        },
        {
            "check": "latency-p99",
            "outcome": "fail",
            "figures": {"canaryP99Ms": 41.5, "stableP99Ms": 20.25, "ratio": 2.049},
            "pValue": 0.0004,
            "message": "p99 canary 41.50 ms vs stable 20.25 ms (2.05x, allowed 1.2x): slower",
        },
        {
            "check": "agreement",
            "outcome": "pending",
            "figures": {},
            "pValue": None,
            "message": "no answers yet",
        },
    ],
}


class FakeRollouts:
    """The interface of `serving.controller.rollouts.Rollouts` the API uses: `iris` has a strategy
    and a rollout in progress, `plain` has no strategy, any other name is no service. Records every
    command with who gave it."""

    def __init__(self) -> None:
        self.current = copy.deepcopy(STATUS)
        self.commands: list[tuple[str, str, str]] = []

    def status(self, name: str) -> dict[str, Any]:
        if name == "plain":
            raise ValueError("InferenceService 'plain' has no rollout strategy (spec.rollout)")
        if name != "iris":
            raise NotFound(f"InferenceService '{name}' not found")
        return self.current

    async def pause(self, name: str, actor: str = "") -> str:
        return self._move(name, "pause", "running", "paused", actor)

    async def resume(self, name: str, actor: str = "") -> str:
        return self._move(name, "resume", "paused", "running", actor)

    async def abort(self, name: str, actor: str = "") -> str:
        return self._move(name, "abort", "running", "aborted", actor)

    def _move(self, name: str, command: str, before: str, after: str, actor: str) -> str:
        state = self.status(name)["state"]
        if state != before:
            raise ValueError(f"the rollout of {CANARY} is {state}, not {before}")
        self.current["state"] = after
        self.commands.append((command, name, actor))
        return f"{CANARY}: {after} by {actor}"


def _isvc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": "/models/mlp"}}},
    }


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    """A controller that is never started, its services stored (the routes' targets read them)."""
    store = Store(tmp_path / "state.db")
    for name in ("iris", "plain"):
        store.put_resource("InferenceService", name, _isvc(name))
    controller = Controller(store, engine=None, router=None, gateway_url="http://127.0.0.1:1")  # type: ignore[arg-type]
    controller.rollouts = FakeRollouts()  # type: ignore[assignment]
    yield controller
    store.close()


@pytest.fixture
def rollouts(controller: Controller) -> FakeRollouts:
    assert isinstance(controller.rollouts, FakeRollouts)
    return controller.rollouts


@pytest.fixture
def http(controller: Controller) -> Iterator[TestClient]:
    app = Starlette(routes=api_routes(controller, Guard(StaticTokens(TOKENS))))
    with TestClient(app) as client:
        yield client


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


VIEWER, DEPLOYER, OTHER_TEAM = (_bearer(token) for token in TOKENS)
ROLLOUT = "/api/v1/inferenceservices/{}/rollout"


# -- the control API ------------------------------------------------------------------------------


def test_a_viewer_reads_the_status_as_the_controller_gives_it(http: TestClient) -> None:
    answer = http.get(ROLLOUT.format("iris"), headers=VIEWER)
    assert answer.status_code == 200, answer.text
    assert answer.json() == STATUS


@pytest.mark.parametrize("command", ["pause", "resume", "abort"])
def test_a_viewer_may_not_command_a_rollout(http: TestClient, rollouts: FakeRollouts, command: str) -> None:
    refused = http.post(ROLLOUT.format("iris") + f"/{command}", headers=VIEWER)
    assert refused.status_code == 403, refused.text
    assert "dashboard" in refused.json()["error"]
    assert rollouts.commands == []


def test_no_token_is_401(http: TestClient) -> None:
    assert http.get(ROLLOUT.format("iris")).status_code == 401
    assert http.post(ROLLOUT.format("iris") + "/pause").status_code == 401


def test_a_deployer_pauses_resumes_and_aborts_as_itself(http: TestClient, rollouts: FakeRollouts) -> None:
    for command, state in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        answer = http.post(ROLLOUT.format("iris") + f"/{command}", headers=DEPLOYER)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"name": "iris", "message": f"{CANARY}: {state} by ci"}
    assert rollouts.commands == [("pause", "iris", "ci"), ("resume", "iris", "ci"), ("abort", "iris", "ci")]


def test_a_deployer_of_another_namespace_is_refused(http: TestClient, rollouts: FakeRollouts) -> None:
    for answer in (
        http.get(ROLLOUT.format("iris"), headers=OTHER_TEAM),
        http.post(ROLLOUT.format("iris") + "/pause", headers=OTHER_TEAM),
    ):
        assert answer.status_code == 403, answer.text
        assert "team-a" in answer.json()["error"]
    assert rollouts.commands == []


@pytest.mark.parametrize("path", ["", "/pause", "/resume", "/abort"])
def test_an_unknown_service_is_404(http: TestClient, path: str) -> None:
    answer = http.request("GET" if not path else "POST", ROLLOUT.format("ghost") + path, headers=DEPLOYER)
    assert answer.status_code == 404, answer.text
    assert answer.json() == {"error": "InferenceService 'ghost' not found"}


@pytest.mark.parametrize("path", ["", "/pause", "/resume", "/abort"])
def test_a_service_without_a_strategy_is_409(http: TestClient, path: str) -> None:
    answer = http.request("GET" if not path else "POST", ROLLOUT.format("plain") + path, headers=DEPLOYER)
    assert answer.status_code == 409, answer.text
    assert answer.json() == {"error": "InferenceService 'plain' has no rollout strategy (spec.rollout)"}


def test_nothing_to_resume_is_409(http: TestClient, rollouts: FakeRollouts) -> None:
    answer = http.post(ROLLOUT.format("iris") + "/resume", headers=DEPLOYER)
    assert answer.status_code == 409, answer.text
    assert answer.json() == {"error": f"the rollout of {CANARY} is running, not paused"}
    assert rollouts.commands == []


def test_a_controller_without_rollouts_says_so(controller: Controller, http: TestClient) -> None:
    controller.rollouts = None
    assert http.get(ROLLOUT.format("ghost"), headers=DEPLOYER).status_code == 404
    answer = http.post(ROLLOUT.format("iris") + "/pause", headers=DEPLOYER)
    assert answer.status_code == 503, answer.text
    assert "runs no rollout strategies" in answer.json()["error"]


# -- serving.Client, and the CLI, wired to the API in process ------------------------------------


class Wire:
    """Forwards every request of a `serving.Client` to the in-process API, and records them."""

    def __init__(self, http: TestClient) -> None:
        self.http = http
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        headers = {k: v for k, v in request.headers.items() if k in ("authorization", "content-type")}
        answer = self.http.request(
            request.method, request.url.raw_path.decode(), content=request.content, headers=headers
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


@pytest.fixture
def wire(http: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Wire:
    """Every `serving.Client` made from here on talks to the API in process (no token found on the
    machine that runs the tests)."""
    from serving import client as client_module

    for name in ("SERVEGATE_TOKEN", "SERVEGATE_TOKEN_FILE", "SERVEGATE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SERVEGATE_STATE_DIR", str(tmp_path / "state"))
    wire = Wire(http)
    real = client_module.Client

    class Wired(real):  # type: ignore[misc, valid-type]
        def __init__(self, url: str | None = None, timeout: float = 30.0, **kwargs: Any) -> None:
            super().__init__(url, timeout, transport=httpx.MockTransport(wire), **kwargs)

    monkeypatch.setattr(client_module, "Client", Wired)
    return wire


def _client(wire: Wire, token: str = "deployer-token") -> Client:
    return Client(URL, token=token, transport=httpx.MockTransport(wire))


def test_the_client_reads_and_commands_a_rollout(wire: Wire, rollouts: FakeRollouts) -> None:
    with _client(wire) as client:
        assert client.rollout_status("iris") == STATUS
        assert client.rollout_pause("iris") == f"{CANARY}: paused by ci"
        assert client.rollout_resume("iris") == f"{CANARY}: running by ci"
        assert client.rollout_abort("iris") == f"{CANARY}: aborted by ci"
    assert [(r.method, r.url.path) for r in wire.requests] == [
        ("GET", "/api/v1/inferenceservices/iris/rollout"),
        ("POST", "/api/v1/inferenceservices/iris/rollout/pause"),
        ("POST", "/api/v1/inferenceservices/iris/rollout/resume"),
        ("POST", "/api/v1/inferenceservices/iris/rollout/abort"),
    ]
    assert rollouts.current["state"] == "aborted"


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [
        (lambda c: c.rollout_status("ghost"), 404, "InferenceService 'ghost' not found"),
        (lambda c: c.rollout_pause("plain"), 409, "has no rollout strategy"),
        (lambda c: c.rollout_resume("iris"), 409, "is running, not paused"),
    ],
)
def test_the_client_raises_the_gateway_message(wire: Wire, call: Any, status: int, message: str) -> None:
    with _client(wire) as client, pytest.raises(ServegateError) as raised:
        call(client)
    assert raised.value.status == status
    assert message in raised.value.message


def test_the_client_refused_by_role_is_a_403(wire: Wire) -> None:
    with _client(wire, "viewer-token") as client, pytest.raises(ServegateError) as raised:
        client.rollout_abort("iris")
    assert raised.value.status == 403


def test_the_client_quotes_the_name() -> None:
    paths: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode())
        return httpx.Response(200, json={"message": "ok"})

    with Client(URL, transport=httpx.MockTransport(answer)) as client:
        client.rollout_pause("a/b")
    assert paths == ["/api/v1/inferenceservices/a%2Fb/rollout/pause"]


def run(*args: str, token: str = "deployer-token") -> Result:
    return CliRunner().invoke(cli, ["rollout", *args, "--url", URL, "--token", token])


def test_status_shows_the_stage_the_stages_and_the_checks(wire: Wire, rollouts: FakeRollouts) -> None:
    rollouts.current["stageStarted"] = time.time() - 75
    out = ok(run("status", "iris"))
    assert "iris" in out and f"{CANARY} vs stable {STABLE}" in out
    assert "2/4: 25% live, held 1m" in out and "of 2m" in out
    assert "1/3" in out and "25% live: judging" in out
    marked = [line.split() for line in out.splitlines() if line.strip().startswith("*")]
    assert marked == [["*", "2", "25%", "live", "2m"]]
    for check in ("error-rate", "latency-p99", "agreement"):
        assert check in out
    assert "ratio=2.049" in out and "0.0004" in out
    assert "\x1b[" not in out  # no colours when the output is not a terminal


def test_status_without_a_canary(wire: Wire, rollouts: FakeRollouts) -> None:
    rollouts.current |= {"canary": None, "stable": None, "state": "none", "stage": None, "checks": []}
    out = ok(run("status", "iris"))
    assert "Canary:" in out and "none" in out
    assert "<none>" in out
    assert not [line for line in out.splitlines() if line.strip().startswith("*")]


@pytest.mark.parametrize(("fmt", "load"), [("json", json.loads), ("yaml", yaml.safe_load)])
def test_status_as_json_or_yaml_is_the_answer_as_it_is(wire: Wire, fmt: str, load: Any) -> None:
    assert load(ok(run("status", "iris", "-o", fmt))) == STATUS


def test_pause_resume_abort_print_the_message(wire: Wire, rollouts: FakeRollouts) -> None:
    assert ok(run("pause", "iris")).strip() == f"{CANARY}: paused by ci"
    assert ok(run("resume", "iris")).strip() == f"{CANARY}: running by ci"
    assert ok(run("abort", "iris")).strip() == f"{CANARY}: aborted by ci"
    assert [c for c, _, _ in rollouts.commands] == ["pause", "resume", "abort"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["status", "ghost"], "error: InferenceService 'ghost' not found"),
        (["status", "plain"], "error: InferenceService 'plain' has no rollout strategy"),
        (["resume", "iris"], f"error: the rollout of {CANARY} is running, not paused"),
        (["abort", "ghost"], "error: InferenceService 'ghost' not found"),
    ],
)
def test_errors_exit_1_with_the_gateway_message(wire: Wire, args: list[str], says: str) -> None:
    fails(run(*args), 1, says)


def test_a_viewer_token_cannot_pause(wire: Wire, rollouts: FakeRollouts) -> None:
    fails(run("pause", "iris", token="viewer-token"), 1, "error: token 'dashboard'")
    assert rollouts.commands == []


def test_without_a_token_the_error_says_how_to_give_one(wire: Wire) -> None:
    result = CliRunner().invoke(cli, ["rollout", "status", "iris", "--url", URL])
    fails(result, 1, "give --token or --token-file")


def test_every_rollout_command_takes_the_gateway_options() -> None:
    assert set(rollout_group.commands) == {"status", "pause", "resume", "abort"}
    for command in rollout_group.commands.values():
        flags = {flag for param in command.params for flag in param.opts}
        assert {"--url", "--token", "--token-file", "--ca-cert"} <= flags, command.name
    assert cli.commands["rollout"] is rollout_group


# -- the text of `rollout status` -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45.9, "45s"), (60, "1m"), (90, "1m30s"), (3600, "1h"), (3900, "1h5m"), (-3, "0s")],
)
def test_span(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_stage_text() -> None:
    assert stage_text(STATUS, now=1075.0) == "2/4: 25% live, held 1m15s of 2m"
    shadow = STATUS | {"stage": 0}
    assert stage_text(shadow, now=1030.0) == "1/4: shadow 10%, held 30s of 1m"
    # The hold counts only while the stage runs (or is paused): not once all stages passed.
    assert stage_text(STATUS | {"state": "waiting", "stage": 3}, now=5000.0) == "4/4: 100% live"
    assert stage_text(STATUS | {"stage": None}, now=0.0) == "-"


def test_status_fields() -> None:
    fields = dict(status_fields(STATUS, now=1075.0))
    assert fields["Canary"] == f"{CANARY} vs stable {STABLE}"
    assert fields["Traffic"] == "25% live, 0% mirrored"
    assert fields["Failures"] == "1/3"
    assert dict(status_fields(STATUS | {"canary": None}, now=0.0))["Canary"] == "none"


def test_stage_rows_mark_the_current_stage() -> None:
    assert stage_rows(STATUS) == [
        ["", "1", "shadow 10%", "1m"],
        ["*", "2", "25% live", "2m"],
        ["", "3", "50% live", "2m"],
        ["", "4", "100% live", "0s"],
    ]


def test_check_rows() -> None:
    rows = check_rows(STATUS)
    assert rows[0][:4] == [
        "error-rate",
        "pass",
        "canaryRate=0.008333 stableRate=0.01 canaryRequests=120 stableRequests=100",
        "0.61",
    ]
    assert rows[1][3] == "0.0004"
    assert rows[2] == ["agreement", "pending", "", "-", "no answers yet"]


def test_figures_text_leaves_out_what_is_not_known() -> None:
    assert figures_text({"ratio": None, "canaryRequests": 3}) == "canaryRequests=3"
