"""The pipelines' read API: runs listed and shown with their DAG, a step's log (only from its run's
folder, only its tail), lineage joined with the services serving a registry version, every error as
`{"error": ...}`, tokens. Starlette's TestClient over a metadata store in tmp_path filled through its
own methods, as the executor fills it; one real run of a small pipeline at the end."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from serving.auth import Guard, Principal, Role, StaticTokens
from serving.client import Client, ServegateError
from serving.pipelines import api
from serving.pipelines._views import dag_edges, lineage_target, served_by
from serving.pipelines.api import StoreOpener, pipeline_routes
from serving.pipelines.metadata import MetadataStore, cache_key, default_url
from serving.pipelines.types import ArtifactRef, Const, OutputRef, PipelineSpec, StepResult, StepSpec
from serving.registry.artifacts import artifact_digest

T0 = 1_735_787_045.0
VIEWER, TEAM = "viewer-secret", "team-secret"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def fraud(lr: float) -> PipelineSpec:
    load = StepSpec("load", "load", "c.py", "load", params={"rows": Const(2)}, outputs={"data": "Dataset"})
    train = StepSpec(
        "train", "train", "c.py", "train",
        params={"lr": Const(lr)}, artifacts={"data": ArtifactRef("load", "data")},
        outputs={"model": "Model", "metrics": "Metrics"},
    )  # fmt: skip
    register = StepSpec(
        "register", "register", "c.py", "register",
        params={"epochs": OutputRef("train")}, artifacts={"model": ArtifactRef("train", "model")},
    )  # fmt: skip
    return PipelineSpec("fraud", {"lr": lr}, (load, train, register))


class Recorder:
    """Records runs of `fraud` as the executor would: files and logs under the state dir."""

    def __init__(self, store: MetadataStore, state: Path) -> None:
        self.store, self.state = store, state

    def log_path(self, run_id: str, step_id: str) -> Path:
        return self.state / "pipelines" / "logs" / run_id / f"{step_id}.log"

    def step(
        self,
        run_id: str,
        step: StepSpec,
        files: dict[str, tuple[str, dict[str, Any]]],
        inputs: dict[str, list[int]],
        attempts: int = 1,
        outputs: dict[str, Any] | None = None,
    ) -> dict[str, tuple[int, str]]:
        key = cache_key("code", step.component, {}, {n: [str(i)] for n, i in inputs.items()})
        if not files and (hit := self.store.cached(key)):
            self.store.step_finished(run_id, hit.result, inputs, key, cached_from=hit.source)
            return {name: (a["id"], a["sha256"]) for name, a in hit.result.artifacts.items()}
        for attempt in range(1, attempts + 1):
            self.store.step_started(run_id, step, attempt, key)
        log = self.log_path(run_id, step.id)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(f"{step.id} line {i}\n" for i in range(1, 6)))
        produced = {}
        for name, (text, metadata) in files.items():
            path = self.state / "pipelines" / "artifacts" / run_id / step.id / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            sha, size = artifact_digest(path)
            kind = step.outputs[name]
            produced[name] = (
                self.store.record_artifact(run_id, step.id, name, kind, str(path), sha, size, metadata),
                sha,
            )
        result = StepResult(step.id, "SUCCEEDED", params=outputs or {}, attempts=attempts, log_path=str(log))
        self.store.step_finished(run_id, result, inputs, key)
        return produced

    def run(self, lr: float, version: int) -> tuple[str, dict[str, tuple[int, str]]]:
        spec = fraud(lr)
        run_id = self.store.start_run(spec, "local")
        # The first run writes the dataset; the second reuses it (cached), so lineage crosses runs.
        files = {"data": ("x,y\n1,2\n", {"rows": 1})} if version == 1 else {}
        load = self.step(run_id, spec.step("load"), files, {})
        train = self.step(
            run_id, spec.step("train"),
            {"model": (f"weights {lr}", {}), "metrics": ("{}", {"accuracy": 0.9})},
            {"data": [load["data"][0]]}, attempts=version, outputs={"output": 3},
        )  # fmt: skip
        self.step(run_id, spec.step("register"), {}, {"model": [train["model"][0]]})
        self.store.record_registration(run_id, "register", train["model"][0], f"registry://fraud/{version}")
        self.store.finish_run(run_id, "SUCCEEDED")
        return run_id, {**load, **train}


def isvc(name: str, namespace: str, traffic: list[tuple[str, int, str]]) -> dict[str, Any]:
    """An InferenceService view as GET /api/v1/inferenceservices lists it (the fields read here)."""
    entries = [
        {"revisionName": rev, "percent": pct, "latestRevision": i == len(traffic) - 1, "storageUri": uri}
        for i, (rev, pct, uri) in enumerate(traffic)
    ]
    return {
        "metadata": {"name": name, "namespace": namespace},
        "status": {"components": {"predictor": {"traffic": entries}}},
    }


SERVICES = [
    isvc(
        "fraud",
        "risk",
        [("fraud-00001", 90, "registry://fraud/1"), ("fraud-00002", 10, "registry://fraud/2")],
    ),
    isvc("other", "default", [("other-00001", 100, "registry://other/1")]),
    isvc("plain", "default", [("plain-00001", 100, "s3://bucket/model")]),
    {"metadata": {"name": "new"}},  # no status yet
]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def recorded(state: Path) -> Iterator[tuple[Recorder, str, str, dict[str, tuple[int, str]]]]:
    with MetadataStore(default_url(state), clock=Clock()) as store:
        recorder = Recorder(store, state)
        first, outputs = recorder.run(0.1, 1)
        second, _ = recorder.run(0.2, 2)
        yield recorder, first, second, outputs


def guard() -> Guard:
    return Guard(
        StaticTokens(
            {
                VIEWER: Principal.of_role("viewer", Role.VIEWER),
                TEAM: Principal.of_role("team", Role.VIEWER, namespaces=frozenset({"default"})),
            }
        )
    )


def build(state: Path, services: list[dict[str, Any]] = SERVICES) -> tuple[TestClient, StoreOpener]:
    """The routes in the gateway's order: ours before a control API mount of `/api/v1` with its
    `/{plural}` and `/{plural}/{name}` routes (which answer "control")."""

    async def control(request: Request) -> JSONResponse:
        return JSONResponse({"control": request.path_params["plural"]})

    control_api = Mount("/api/v1", routes=[Route("/{plural}", control), Route("/{plural}/{name}", control)])
    opener = StoreOpener.for_state_dir(state)
    routes = pipeline_routes(opener, guard(), state_dir=state, services=lambda: services)
    client = TestClient(
        Starlette(routes=[*routes, control_api]), headers={"authorization": f"Bearer {VIEWER}"}
    )
    return client, opener


@pytest.fixture
def client(state: Path, recorded: Any) -> Iterator[TestClient]:
    http, opener = build(state)
    with http:
        yield http
    opener.close()


# -- runs -----------------------------------------------------------------------------------------


def test_runs_are_listed_newest_first(client: TestClient, recorded: Any) -> None:
    _, first, second, _ = recorded
    items = client.get("/api/v1/pipelines/runs").json()["items"]
    assert [r["id"] for r in items] == [second, first]
    assert items[0]["pipeline"] == "fraud" and items[0]["status"] == "SUCCEEDED"
    assert items[0]["executor"] == "local"
    assert items[0]["steps"] == {"CACHED": 1, "SUCCEEDED": 2}
    assert items[0]["duration_s"] == pytest.approx(items[0]["finished"] - items[0]["started"])

    assert [r["id"] for r in client.get("/api/v1/pipelines/runs?limit=1").json()["items"]] == [second]
    assert client.get("/api/v1/pipelines/runs?pipeline=fraud&limit=500").json()["items"][1]["id"] == first
    assert client.get("/api/v1/pipelines/runs?pipeline=nightly").json() == {"items": []}


def test_a_run_shows_its_steps_and_dag(client: TestClient, recorded: Any) -> None:
    _, first, second, outputs = recorded
    run = client.get(f"/api/v1/pipelines/runs/{second}").json()
    assert run["id"] == second and run["params"] == {"lr": 0.2}
    assert run["edges"] == [["load", "train"], ["train", "register"]]
    load, train, register = run["steps"]
    assert [s["id"] for s in run["steps"]] == ["load", "train", "register"]

    # A cached step: its source, and the source's artifacts.
    assert load["state"] == "CACHED" and load["cache_source"] == {"run": first, "step": "load"}
    [data] = load["artifacts"]
    assert (data["name"], data["type"], data["run"], data["step"]) == ("data", "Dataset", first, "load")
    assert data["sha256"] == outputs["data"][1] and data["size"] == len("x,y\n1,2\n")

    assert train["state"] == "SUCCEEDED" and train["attempts"] == 2 and train["cache_source"] is None
    assert train["parameters"] == {"lr": 0.2}
    assert train["metrics"] == {"accuracy": 0.9, "output": 3.0}
    assert {a["name"] for a in train["artifacts"]} == {"model", "metrics"}
    assert train["inputs"] == {"data": [outputs["data"][0]]}
    assert train["has_log"] and train["duration_s"] is not None
    assert register["parameters"] == {"epochs": {"ref": "train.output"}}
    assert [r["uri"] for r in run["registrations"]] == ["registry://fraud/2"]

    # A unique prefix of a run id names it, as in the CLI.
    assert client.get(f"/api/v1/pipelines/runs/{second[:-2]}").json()["id"] == second


def test_dag_edges_follow_references_conditions_and_after() -> None:
    spec = {
        "steps": [
            {"id": "a", "params": {"n": {"value": {"step": "not-a-ref"}}}},
            {"id": "b", "params": {"x": {"step": "a", "name": "output"}}},
            {"id": "b-2", "artifacts": {"d": {"step": "a", "name": "data"}}},
            {
                "id": "sum",
                "params": {"xs": [{"step": "b", "name": "output"}, {"step": "b-2", "name": "output"}]},
            },
            {"id": "fit", "conditions": [{"left": {"step": "sum", "name": "total"}, "op": ">", "right": 1}]},
            {"id": "tidy", "after": ["fit", "a"]},
            {"id": "gone", "after": ["a"]},  # not a step of the run: no edge
        ]
    }
    edges = dag_edges(spec, ["a", "b", "b-2", "sum", "fit", "tidy"])
    assert edges == [
        ["a", "b"],
        ["a", "b-2"],
        ["b", "sum"],
        ["b-2", "sum"],
        ["sum", "fit"],
        ["a", "tidy"],
        ["fit", "tidy"],
    ]


# -- logs -----------------------------------------------------------------------------------------


def test_a_step_log_is_its_tail(client: TestClient, recorded: Any) -> None:
    second = recorded[2]
    body = client.get(f"/api/v1/pipelines/runs/{second}/steps/train/log").json()
    assert body["lines"] == [f"train line {i}" for i in range(1, 6)]
    assert body["available"] and not body["truncated"]
    body = client.get(f"/api/v1/pipelines/runs/{second}/steps/train/log?lines=2").json()
    assert body["lines"] == ["train line 4", "train line 5"] and body["truncated"]
    # A cached step's log is the one of the execution it reused, in that run's folder.
    assert client.get(f"/api/v1/pipelines/runs/{second}/steps/load/log").json()["lines"][0] == "load line 1"


def test_only_the_last_bytes_of_a_log_are_read(
    client: TestClient, recorded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, _, second, _ = recorded
    recorder.log_path(second, "train").write_text("a" * 100 + "\n" + "b" * 10 + "\n" + "c" * 10 + "\n")
    monkeypatch.setattr(api, "MAX_LOG_BYTES", 15)
    body = client.get(f"/api/v1/pipelines/runs/{second}/steps/train/log").json()
    assert body["lines"] == ["c" * 10] and body["truncated"]  # "b...b" was cut by the bound: left out
    monkeypatch.setattr(api, "MAX_LOG_BYTES", 22)  # the bound falls just after a newline: b's line is whole
    assert client.get(f"/api/v1/pipelines/runs/{second}/steps/train/log").json()["lines"] == [
        "b" * 10,
        "c" * 10,
    ]


def test_a_step_without_a_log_has_no_lines(client: TestClient, recorded: Any) -> None:
    recorder, _, _, _ = recorded
    run_id = recorder.store.start_run(fraud(0.3), "local")  # every step PENDING
    body = client.get(f"/api/v1/pipelines/runs/{run_id}/steps/load/log").json()
    assert body == {"run": run_id, "step": "load", "lines": [], "truncated": False, "available": False}


@pytest.mark.parametrize("where", ["outside", "other-run", "symlink", "fifo"])
def test_a_log_is_read_only_from_its_run_folder(
    client: TestClient, recorded: Any, state: Path, tmp_path: Path, where: str
) -> None:
    recorder, first, _, _ = recorded
    secret = tmp_path / "secret.txt"
    secret.write_text("do not show\n")
    run_id = recorder.store.start_run(fraud(0.4), "local")
    step = fraud(0.4).step("load")
    recorder.store.step_started(run_id, step, 1, None)
    folder = recorder.log_path(run_id, "load").parent
    folder.mkdir(parents=True)
    if where == "outside":
        log = str(secret)
    elif where == "other-run":  # another run's folder, not this step's cache source
        log = str(recorder.log_path(first, "train"))
    elif where == "symlink":
        (folder / "load.log").symlink_to(secret)
        log = str(folder / "load.log")
    else:  # a FIFO in the right place: not a file, and reading must not wait for a writer
        os.mkfifo(folder / "load.log")
        log = str(folder / "load.log")
    recorder.store.step_finished(run_id, StepResult("load", "FAILED", log_path=log), {}, None)

    response = client.get(f"/api/v1/pipelines/runs/{run_id}/steps/load/log")
    if where == "fifo":
        assert response.status_code == 200 and response.json()["available"] is False
    else:
        assert response.status_code == 403
        assert "not in its run's folder" in response.json()["error"]
        assert "do not show" not in response.text


# -- lineage --------------------------------------------------------------------------------------


def test_lineage_from_a_registry_version_reaches_its_data_and_its_services(
    client: TestClient, recorded: Any
) -> None:
    _, first, second, outputs = recorded
    for target in ("fraud@2", "registry://fraud/2", "fraud/2"):
        graph = client.get("/api/v1/lineage", params={"target": target}).json()
        assert graph["target"] == "registry://fraud/2" and graph["direction"] == "up"
        nodes = {n["id"]: n for n in graph["nodes"]}
        # Back through the cached load to the run that wrote the dataset.
        assert f"step:{second}/train" in nodes and f"step:{first}/load" in nodes
        assert nodes[f"artifact:{outputs['data'][0]}"]["sha256"] == outputs["data"][1]
        assert [r["id"] for r in graph["runs"]] == [first, second]
        # Forward to the service whose canary revision runs it.
        [registration] = [n for n in graph["nodes"] if n["kind"] == "registration"]
        assert graph["roots"] == [registration["id"]]
        assert nodes["service:risk/fraud"]["traffic"] == [
            {
                "version": "registry://fraud/2",
                "component": "predictor",
                "revision": "fraud-00002",
                "percent": 10,
            }
        ]
        assert {"source": registration["id"], "kind": "served", "target": "service:risk/fraud"} in graph[
            "edges"
        ]
        assert [(s["name"], s["revision"]) for s in graph["services"]] == [("fraud", "fraud-00002")]
        ends = {e["source"] for e in graph["edges"]} | {e["target"] for e in graph["edges"]}
        assert ends <= set(nodes)


def test_lineage_down_from_a_dataset_reaches_every_version_and_service(
    client: TestClient, recorded: Any
) -> None:
    _, _, _, outputs = recorded
    sha = outputs["data"][1]
    graph = client.get("/api/v1/lineage", params={"target": sha[:16], "direction": "down"}).json()
    assert graph["direction"] == "down"
    assert {n["uri"] for n in graph["nodes"] if n["kind"] == "registration"} == {
        "registry://fraud/1",
        "registry://fraud/2",
    }
    assert [(s["version"], s["percent"]) for s in graph["services"]] == [
        ("registry://fraud/1", 90),
        ("registry://fraud/2", 10),
    ]
    assert sum(e["kind"] == "served" for e in graph["edges"]) == 2


def test_lineage_of_a_run_and_services_a_token_may_not_see(client: TestClient, recorded: Any) -> None:
    _, first, _, _ = recorded
    graph = client.get("/api/v1/lineage", params={"target": first}).json()
    assert any(n["kind"] == "step" and n["run"] == first for n in graph["nodes"])
    assert [s["version"] for s in graph["services"]] == ["registry://fraud/1"]
    # A token limited to the default namespace does not see the service in "risk".
    team = client.get(
        "/api/v1/lineage", params={"target": first}, headers={"authorization": f"Bearer {TEAM}"}
    )
    assert team.status_code == 200 and team.json()["services"] == []
    assert not any(n["kind"] == "service" for n in team.json()["nodes"])


def test_served_by_joins_traffic_pins_with_versions() -> None:
    services = [
        *SERVICES,
        isvc("follows", "ml", [("follows-00003", 100, "registry://fraud@production")]),  # an unpinned alias
        isvc("broken", "ml", [("broken-00001", 100, "registry://")]),
        {"metadata": {"name": "odd"}, "status": {"components": {"predictor": None}}},
    ]
    assert served_by(services, ["registry://fraud/2", "registry://other/1/", "not a uri"]) == [
        {"version": "registry://fraud/2", "name": "fraud", "namespace": "risk", "component": "predictor",
         "revision": "fraud-00002", "percent": 10, "latestRevision": True},
        {"version": "registry://other/1", "name": "other", "namespace": "default", "component": "predictor",
         "revision": "other-00001", "percent": 100, "latestRevision": True},
    ]  # fmt: skip
    assert served_by(services, []) == []


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("fraud@3", "registry://fraud/3"),
        ("fraud/3", "registry://fraud/3"),
        ("registry://fraud/3", "registry://fraud/3"),
        (" 9f0c1a2b3c4d ", "9f0c1a2b3c4d"),
        ("sha256:9f0c1a2b3c4d", "sha256:9f0c1a2b3c4d"),
        ("fraud-20250102-030405-abcdef", "fraud-20250102-030405-abcdef"),
    ],
)
def test_lineage_targets(given: str, expected: str) -> None:
    assert lineage_target(given) == expected


@pytest.mark.parametrize(
    "bad", ["", "fraud@production", "registry://fraud@prod", "a b", "registry://", "x" * 301, "../x/1"]
)
def test_bad_lineage_targets(bad: str) -> None:
    with pytest.raises(ValueError):
        lineage_target(bad)


# -- errors and tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/api/v1/pipelines/runs/nightly-20250101-000000-abcdef", 404, "nightly-20250101-000000-abcdef"),
        ("/api/v1/pipelines/runs/fraud-", 400, "more than one run"),
        ("/api/v1/pipelines/runs/RUN/steps/evaluate/log", 404, "evaluate"),
        ("/api/v1/pipelines/runs/nope/steps/load/log", 404, "nope"),
        ("/api/v1/pipelines/runs?limit=0", 400, "limit must be a whole number from 1 to 500"),
        ("/api/v1/pipelines/runs?limit=ten", 400, "limit"),
        ("/api/v1/pipelines/runs?limit=501", 400, "limit"),
        ("/api/v1/pipelines/runs/RUN/steps/load/log?lines=-1", 400, "lines"),
        ("/api/v1/lineage", 400, "bad lineage target"),
        ("/api/v1/lineage?target=fraud@production", 400, "alias"),
        ("/api/v1/lineage?target=fraud@2&direction=sideways", 400, "direction"),
        ("/api/v1/lineage?target=fraud@9", 404, "registry://fraud/9"),
        ("/api/v1/lineage?target=abcdef0123456789", 404, "abcdef0123456789"),
        ("/api/v1/pipelines/nothing", 404, "Not Found"),
    ],
)
def test_errors_say_what_is_wrong(
    client: TestClient, recorded: Any, path: str, status: int, says: str
) -> None:
    response = client.get(path.replace("RUN", recorded[2]))
    assert response.status_code == status, response.text
    assert says in response.json()["error"]


ROUTES = [
    "/api/v1/pipelines/runs",
    "/api/v1/pipelines/runs/RUN",
    "/api/v1/pipelines/runs/RUN/steps/train/log",
    "/api/v1/lineage?target=fraud@1",
]


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_needs_a_token_with_the_read_scope(client: TestClient, recorded: Any, path: str) -> None:
    path = path.replace("RUN", recorded[2])
    assert client.get(path, headers={"authorization": ""}).status_code == 401
    assert client.get(path, headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.get(path).status_code == 200


def test_the_control_api_mounted_after_keeps_its_paths(client: TestClient) -> None:
    assert client.get("/api/v1/inferenceservices").json() == {"control": "inferenceservices"}
    assert client.get("/api/v1/trainedmodels/x").json() == {"control": "trainedmodels"}
    assert "items" in client.get("/api/v1/pipelines/runs").json()
    assert "nodes" in client.get("/api/v1/lineage?target=fraud@1").json()


def test_before_any_run_there_are_no_runs_and_no_database(state: Path) -> None:
    http, opener = build(state)
    assert http.get("/api/v1/pipelines/runs").json() == {"items": []}
    assert http.get("/api/v1/pipelines/runs/fraud-1").status_code == 404
    assert http.get("/api/v1/lineage?target=fraud@1").status_code == 404
    assert not (state / "pipelines.db").exists()  # looking created nothing
    # Once a run is recorded, the same routes see it.
    with MetadataStore(default_url(state), clock=Clock()) as store:
        Recorder(store, state).run(0.1, 1)
    assert len(http.get("/api/v1/pipelines/runs").json()["items"]) == 1
    opener.close()


def test_a_store_that_cannot_be_opened_is_503(tmp_path: Path) -> None:
    (tmp_path / "pipelines.db").write_text("not a database")
    routes = pipeline_routes(StoreOpener.for_state_dir(tmp_path), Guard(None), state_dir=tmp_path)
    with TestClient(Starlette(routes=routes)) as http:
        response = http.get("/api/v1/pipelines/runs")
    assert response.status_code == 503 and "metadata store" in response.json()["error"]


def test_the_python_client_reads_the_same(client: TestClient, recorded: Any) -> None:
    _, first, second, _ = recorded

    def forward(request: httpx.Request) -> httpx.Response:
        answer = client.request(request.method, request.url.raw_path.decode())
        return httpx.Response(answer.status_code, content=answer.content, headers=answer.headers)

    with Client("http://gateway.test", token=VIEWER, transport=httpx.MockTransport(forward)) as sdk:
        assert [r["id"] for r in sdk.pipeline_runs(limit=1, pipeline="fraud")] == [second]
        assert sdk.pipeline_run(first)["edges"] == [["load", "train"], ["train", "register"]]
        assert sdk.lineage("fraud@1")["services"][0]["revision"] == "fraud-00001"
        with pytest.raises(ServegateError) as refused:
            sdk.pipeline_run("nope")
    assert refused.value.status == 404 and "nope" in str(refused.value)


# -- a real run -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_real_pipeline_run_shows_up(state: Path) -> None:
    from serving.pipelines.backends import LocalBackend
    from serving.pipelines.compiler import compile_pipeline
    from serving.pipelines.executor import execute
    from tests import pipeline_components as pc

    with MetadataStore(default_url(state)) as store:
        outcome = asyncio.run(execute(compile_pipeline(pc.branches, None), store, LocalBackend(), state))
    http, opener = build(state)
    with http:
        [run] = http.get("/api/v1/pipelines/runs").json()["items"]
        assert run["id"] == outcome.run_id and run["status"] == "FAILED"
        detail = http.get(f"/api/v1/pipelines/runs/{run['id']}").json()
        assert {s["id"]: s["state"] for s in detail["steps"]} == {
            "fail": "FAILED", "echo": "SKIPPED", "echo-2": "SUCCEEDED",
        }  # fmt: skip
        assert detail["edges"] == [["fail", "echo"]]
        log = http.get(f"/api/v1/pipelines/runs/{run['id']}/steps/fail/log").json()
        assert "about to fail" in log["lines"]
        echo = http.get(f"/api/v1/pipelines/runs/{run['id']}/steps/echo-2/log").json()
        assert "independent" in echo["lines"]
    opener.close()
