"""`servegate up`'s components beyond one model per service, as clients see them: TrainedModels on a
multi-model service (loaded on demand, least recently used unloaded), InferenceGraphs of every node
type over real services, a transformer in front of a predictor, and the payload logger.

One gateway serves the whole module; each test applies what it needs and deletes it afterwards.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from router.core import COMPONENT_HEADER
from tests.gateway_helpers import (
    MLP_X,
    REVISION,
    X_BODY,
    ControlApi,
    HttpSink,
    Received,
    gateway_process,
    metric_total,
    mlp_body,
    mlp_isvc,
    python_isvc,
    replica_models,
    replica_urls,
    revision,
)
from tests.servers import GatewayProcess, free_port, until

pytestmark = pytest.mark.integration

#: chi-square critical value for 1 degree of freedom at p = 0.001.
CHI2_1DOF_P001 = 10.83
MAX_MODELS = "serving.servegate.io/max-models-per-replica"
ANONYMOUS = "serving.servegate.io/anonymous-inference"
V1_BODY = {"instances": [1.0, 2.0, 3.0]}

Deploy = Callable[..., None]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The module's `servegate up`. Graph steps and payload loggers here send to loopback: to HTTP
    sinks on ports picked during the tests, and to the gateway itself; the storage policy refuses
    loopback URLs unless allowed."""
    yield from gateway_process(
        tmp_path_factory.mktemp("gateway") / "state",
        "--allow-host",
        "127.0.0.1",
        storage_root=tmp_path_factory.getbasetemp(),
    )


@pytest.fixture
def deploy(api: ControlApi) -> Iterator[Deploy]:
    """`deploy(*manifests)`: apply them (InferenceServices, TrainedModels, InferenceGraphs) and wait
    until each InferenceService is Ready; all are deleted after the test."""
    applied: list[tuple[str, str]] = []

    def apply(*manifests: dict[str, Any]) -> None:
        api.apply(*manifests)
        applied.extend((m["kind"], m["metadata"]["name"]) for m in manifests)
        for manifest in manifests:
            if manifest["kind"] == "InferenceService":
                api.wait_ready(manifest["metadata"]["name"])

    yield apply
    plural = {"InferenceService": "inferenceservices", "TrainedModel": "trainedmodels"}
    for kind, name in reversed(applied):
        api.http.delete(f"/{plural.get(kind, 'inferencegraphs')}/{name}")


@pytest.fixture(scope="module")
def expected(model_repo: Path) -> np.ndarray:
    """What ONNX Runtime answers for MLP_X, running the model file directly."""
    session = ort.InferenceSession(str(model_repo / "mlp" / "1" / "model.onnx"))
    return session.run(["output"], {"input": MLP_X})[0]


def output_of(response: httpx.Response, name: str = "output") -> np.ndarray:
    assert response.status_code == 200, response.text
    output = next(o for o in response.json()["outputs"] if o["name"] == name)
    return np.asarray(output["data"]).reshape(output["shape"])


def refused_paths(response: httpx.Response) -> list[str]:
    """The problem paths of a refused apply (400, with an error and a message per problem)."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"]
    assert all(p["message"] for p in body["problems"])
    return sorted(p["path"] for p in body["problems"])


# -- 1. multi-model --------------------------------------------------------------------------------


def multi_model_host(name: str, max_models: int) -> dict[str, Any]:
    """An InferenceService with no model of its own: it hosts TrainedModels."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "annotations": {MAX_MODELS: str(max_models)}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "protocolVersion": "v2"}}},
    }


def trained_model(name: str, host: str, storage_uri: Path) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "TrainedModel",
        "metadata": {"name": name},
        "spec": {
            "inferenceService": host,
            "model": {"storageUri": str(storage_uri), "framework": "onnx", "memory": "64Mi"},
        },
    }


def infer_mlp(http: httpx.Client, model: str, expected: np.ndarray, host: str) -> None:
    """Infer on a TrainedModel serving the MLP: the MLP's answer, from the host's revision."""
    response = http.post(f"/v2/models/{model}/infer", json=mlp_body())
    np.testing.assert_allclose(output_of(response), expected, rtol=1e-5, atol=1e-6)
    assert response.headers[REVISION] == revision(host, 1)


def test_trained_models_load_on_demand_and_the_least_recently_used_is_unloaded(
    gateway: GatewayProcess,
    http: httpx.Client,
    api: ControlApi,
    deploy: Deploy,
    model_repo: Path,
    expected: np.ndarray,
) -> None:
    mlp = model_repo / "mlp" / "1"
    deploy(multi_model_host("host", max_models=2))
    deploy(
        trained_model("m1", "host", mlp),
        trained_model("m2", "host", mlp),
        trained_model("m3", "host", mlp),
        trained_model("m-missing", "host", model_repo / "missing"),
    )
    (replica,) = replica_urls(api, gateway.state_dir, "host")
    models = ("m1", "m2", "m3", "m-missing")

    def held() -> set[str]:
        ready = replica_models(gateway.state_dir, replica)
        assert ready <= set(models), ready
        assert len(ready) <= 2, f"the replica holds {sorted(ready)}, over its limit of 2"
        return ready

    def infer(model: str) -> None:
        infer_mlp(http, model, expected, "host")

    for model in models:
        trained = api.http.get(f"/trainedmodels/{model}")
        assert trained.status_code == 200, trained.text
        assert {c["type"]: c["status"] for c in trained.json()["status"]["conditions"]}["Ready"] == "True"
    assert held() == set()

    # Loaded on first use, up to two.
    infer("m1")
    assert held() == {"m1"}
    infer("m2")
    assert held() == {"m1", "m2"}
    infer("m2")  # already held: nothing moves
    assert held() == {"m1", "m2"}
    # A third unloads the least recently used (m1); m1 again unloads m2, now the oldest.
    infer("m3")
    assert held() == {"m2", "m3"}
    infer("m1")
    assert held() == {"m3", "m1"}
    # A request to a held model makes it the most recent: m3 stays, m1 goes.
    infer("m3")
    infer("m2")
    assert held() == {"m3", "m2"}

    # A model that cannot load answers a clear error; the others still answer.
    response = http.post("/v2/models/m-missing/infer", json=mlp_body())
    assert response.status_code == 503, response.text
    assert "m-missing" in response.json()["error"]
    for model in ("m1", "m2", "m3"):
        infer(model)
        assert model in held()


def test_concurrent_first_requests_keep_the_replica_within_its_model_limit(
    gateway: GatewayProcess,
    http: httpx.Client,
    api: ControlApi,
    deploy: Deploy,
    model_repo: Path,
    expected: np.ndarray,
) -> None:
    deploy(multi_model_host("busy", max_models=2))
    deploy(*(trained_model(f"c{i}", "busy", model_repo / "mlp" / "1") for i in (1, 2, 3)))
    (replica,) = replica_urls(api, gateway.state_dir, "busy")

    with ThreadPoolExecutor(6) as pool:
        for _ in range(5):
            # Each round asks for all three at once: two at most may be loaded, and all answer.
            for future in [pool.submit(infer_mlp, http, m, expected, "busy") for m in ("c1", "c2", "c3") * 2]:
                future.result()
            ready = replica_models(gateway.state_dir, replica)
            assert len(ready) <= 2, f"the replica holds {sorted(ready)}, over its limit of 2"


def test_updated_trained_model_is_served_from_its_new_storage_uri(
    http: httpx.Client, api: ControlApi, deploy: Deploy, model_repo: Path, expected: np.ndarray
) -> None:
    deploy(multi_model_host("swap-host", max_models=2))
    deploy(trained_model("swap", "swap-host", model_repo / "mlp" / "1"))
    infer_mlp(http, "swap", expected, "swap-host")

    def inputs() -> list[str]:
        response = http.get("/v2/models/swap")
        assert response.status_code == 200, response.text
        return [i["name"] for i in response.json()["inputs"]]

    assert inputs() == ["input"]
    # KServe reloads a TrainedModel whose storageUri changes; the identity model has other inputs.
    api.apply(trained_model("swap", "swap-host", model_repo / "identity"))
    until(lambda: inputs() != ["input"], 10, "the updated TrainedModel to be served")
    assert all(name.startswith("in_") for name in inputs()), inputs()


def test_deleted_trained_model_is_unloaded_from_its_replica(
    gateway: GatewayProcess,
    http: httpx.Client,
    api: ControlApi,
    deploy: Deploy,
    model_repo: Path,
    expected: np.ndarray,
) -> None:
    deploy(multi_model_host("drop-host", max_models=2))
    deploy(trained_model("drop", "drop-host", model_repo / "mlp" / "1"))
    (replica,) = replica_urls(api, gateway.state_dir, "drop-host")
    infer_mlp(http, "drop", expected, "drop-host")
    assert replica_models(gateway.state_dir, replica) == {"drop"}

    assert api.http.delete("/trainedmodels/drop").status_code == 200
    until(lambda: http.post("/v2/models/drop/infer", json=mlp_body()).status_code == 404, 10, "no route")
    # KServe unloads a deleted TrainedModel; left loaded, it keeps its memory and a slot.
    until(lambda: replica_models(gateway.state_dir, replica) == set(), 10, "the deleted model to be unloaded")


def test_trained_model_naming_a_missing_service_is_refused(api: ControlApi, model_repo: Path) -> None:
    orphan = trained_model("orphan", "no-such-host", model_repo / "mlp" / "1")
    response = api.apply_text(json.dumps(orphan))
    assert refused_paths(response) == ["TrainedModel/orphan: spec.inferenceService"]
    assert "no-such-host" in response.json()["problems"][0]["message"]
    assert api.http.get("/trainedmodels/orphan").status_code == 404


def test_trained_model_larger_than_its_host_is_refused(api: ControlApi, model_repo: Path) -> None:
    host = multi_model_host("small-host", 4)
    host["spec"]["predictor"]["model"]["resources"] = {"limits": {"memory": "32Mi"}}
    too_big = trained_model("too-big", "small-host", model_repo / "mlp" / "1")  # 64Mi
    response = api.apply_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [host, too_big]}))
    assert refused_paths(response) == ["TrainedModel/too-big: spec.model.memory"]
    assert "exceeds the memory limit" in response.json()["problems"][0]["message"]
    assert api.http.get("/inferenceservices/small-host").status_code == 404  # all or nothing


# -- 2. graphs -------------------------------------------------------------------------------------


def inference_graph(name: str, **nodes: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": name},
        "spec": {"nodes": nodes},
    }


def sequence(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"routerType": "Sequence", "steps": list(steps)}


def v2_result(response: httpx.Response) -> tuple[str, list[float]]:
    """(model name, `y`) of a V2 answer from one of the python models."""
    assert response.status_code == 200, response.text
    body = response.json()
    (output,) = body["outputs"]
    assert output["name"] == "y"
    return body["model_name"], output["data"]


def v2_request_of(reply: dict[str, Any]) -> dict[str, Any]:
    """A V2 request whose inputs are the outputs of a V2 reply, each renamed `x`."""
    return {"inputs": [{**o, "name": "x"} for o in reply.get("outputs", [])]}


def anonymous(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with its data plane open to callers without a token: a graph's serviceUrl step
    reaches it with no credentials (the gateway never passes a client's token to a URL)."""
    manifest["metadata"].setdefault("annotations", {})[ANONYMOUS] = "true"
    return manifest


@pytest.fixture(scope="module")
def graph_services(api: ControlApi) -> Iterator[None]:
    """V2: add-one, times-ten, fails (500 always); V1: add-one-v1 (open to anonymous inference, for
    serviceUrl steps), times-ten-v1."""
    v1 = {"protocolVersion": "v1"}
    services = [
        python_isvc("add-one", "AddOne"),
        python_isvc("times-ten", "TimesTen"),
        python_isvc("fails", "AlwaysFails"),
        anonymous(python_isvc("add-one-v1", "AddOne", model=v1)),
        python_isvc("times-ten-v1", "TimesTen", model=v1),
    ]
    api.apply(*services)
    for service in services:
        api.wait_ready(service["metadata"]["name"])
    yield
    for service in services:
        api.delete(service["metadata"]["name"])


@pytest.fixture
def graph(http: httpx.Client, deploy: Deploy, graph_services: None) -> Callable[..., None]:
    """`graph(name, **nodes)`: apply an InferenceGraph and wait until the gateway routes it."""

    def apply(name: str, **nodes: dict[str, Any]) -> None:
        deploy(inference_graph(name, **nodes))

        def routed() -> bool:
            response = http.post(f"/graphs/{name}", json={})
            return response.json().get("error") != f"InferenceGraph '{name}' not found"

        until(routed, 20, f"graph {name} to be routed")

    return apply


def test_graph_sequence_chains_responses_and_restarts_from_the_request(
    http: httpx.Client, graph: Callable[..., None]
) -> None:
    with HttpSink(lambda received: (200, v2_request_of(json.loads(received.body)))) as convert:
        # add-one -> (its reply, made a request again by a serviceUrl step) -> times-ten.
        graph(
            "chain",
            root=sequence(
                {"name": "first", "serviceName": "add-one"},
                {"name": "convert", "serviceUrl": f"{convert.url}/convert", "data": "$response"},
                {"name": "second", "serviceName": "times-ten", "data": "$response"},
            ),
        )
        response = http.post("/graphs/chain", json=X_BODY)
        assert v2_result(response) == ("times-ten", [20.0, 30.0, 40.0])
        converted = convert.received()[-1]
        assert converted.path == "/convert"
        first = json.loads(converted.body)
        assert (first["model_name"], first["outputs"][0]["data"]) == ("add-one", [2.0, 3.0, 4.0])

    # `$request` (and no `data`) sends the graph's input again, whatever came before.
    graph(
        "restart",
        root=sequence(
            {"serviceName": "add-one"},
            {"serviceName": "add-one", "data": "$response"},  # add-one's reply is no request: 400
            {"serviceName": "times-ten", "data": "$request"},
        ),
    )
    assert v2_result(http.post("/graphs/restart", json=X_BODY)) == ("times-ten", [10.0, 20.0, 30.0])

    # A condition is tested on the previous reply: met, the next step runs; not met, the node stops
    # and answers the previous reply.
    graph(
        "gate",
        root=sequence(
            {"serviceName": "add-one"},
            {"serviceName": "times-ten", "condition": 'outputs.#(name=="y")'},
        ),
    )
    assert v2_result(http.post("/graphs/gate", json=X_BODY)) == ("times-ten", [10.0, 20.0, 30.0])
    graph(
        "stop",
        root=sequence(
            {"serviceName": "add-one"},
            {"serviceName": "times-ten", "condition": "predictions"},
        ),
    )
    assert v2_result(http.post("/graphs/stop", json=X_BODY)) == ("add-one", [2.0, 3.0, 4.0])


#: a Switch condition on the request: its `parameters.route` is the given value.
ROUTE = '[@this].#(parameters.route=="%s")'


def test_graph_switch_takes_the_first_match_and_404s_without_one(
    http: httpx.Client, graph: Callable[..., None]
) -> None:
    graph(
        "switch",
        root={
            "routerType": "Switch",
            "steps": [
                {"name": "add", "serviceName": "add-one", "condition": ROUTE % "add"},
                {"name": "ten", "serviceName": "times-ten", "condition": ROUTE % "ten"},
                {"name": "fallback", "serviceName": "add-one", "condition": "parameters.fallback"},
            ],
        },
    )

    def route(**parameters: Any) -> httpx.Response:
        return http.post("/graphs/switch", json={**X_BODY, "parameters": parameters})

    assert v2_result(route(route="add")) == ("add-one", [2.0, 3.0, 4.0])
    assert v2_result(route(route="ten")) == ("times-ten", [10.0, 20.0, 30.0])
    assert v2_result(route(route="ten", fallback=True)) == ("times-ten", [10.0, 20.0, 30.0])
    assert v2_result(route(route="other", fallback=True)) == ("add-one", [2.0, 3.0, 4.0])

    response = route(route="other")
    assert response.status_code == 404, response.text
    assert "switch" in response.json()["error"].lower()


def test_graph_ensemble_answers_every_step_keyed_by_name(
    gateway: GatewayProcess, http: httpx.Client, graph: Callable[..., None]
) -> None:
    graph(
        "ensemble",
        root={
            "routerType": "Ensemble",
            "steps": [
                {"name": "plus", "serviceName": "add-one-v1"},
                {"name": "tens", "serviceName": "times-ten-v1"},
                {"serviceUrl": f"{gateway.url}/v1/models/add-one-v1:predict"},  # unnamed: keyed "2"
            ],
        },
    )
    response = http.post("/graphs/ensemble", json=V1_BODY)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "plus": {"predictions": [2.0, 3.0, 4.0]},
        "tens": {"predictions": [10.0, 20.0, 30.0]},
        "2": {"predictions": [2.0, 3.0, 4.0]},
    }


def test_graph_splitter_splits_by_weight(http: httpx.Client, graph: Callable[..., None]) -> None:
    graph(
        "split",
        root={
            "routerType": "Splitter",
            "steps": [
                {"serviceName": "add-one", "weight": 80},
                {"serviceName": "times-ten", "weight": 20},
            ],
        },
    )
    total = 200
    counts = Counter(v2_result(http.post("/graphs/split", json=X_BODY))[0] for _ in range(total))
    assert set(counts) == {"add-one", "times-ten"}, counts
    chi2 = sum(
        (counts[model] - total * share) ** 2 / (total * share)
        for model, share in (("add-one", 0.8), ("times-ten", 0.2))
    )
    assert chi2 < CHI2_1DOF_P001, f"split {dict(counts)} is not 80/20 (chi-square {chi2:.1f})"


def test_graph_hard_dependency_failure_ends_the_graph_naming_the_step(
    http: httpx.Client, graph: Callable[..., None]
) -> None:
    steps = [
        {"name": "ok", "serviceName": "add-one"},
        {"name": "boom", "serviceName": "fails", "dependency": "Hard"},
        {"name": "after", "serviceName": "times-ten"},
    ]
    graph("hard", root=sequence(*steps))
    response = http.post("/graphs/hard", json=X_BODY)
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert "'boom'" in error and "'fails'" in error and "Hard" in error, error

    # The same step as a Soft dependency: its failure is passed on and the sequence goes on.
    soft = copy.deepcopy(steps)
    del soft[1]["dependency"]
    graph("soft", root=sequence(*soft))
    assert v2_result(http.post("/graphs/soft", json=X_BODY)) == ("times-ten", [10.0, 20.0, 30.0])


BAD_GRAPHS = {
    "cycle": (
        {
            "root": sequence({"nodeName": "middle"}),
            "middle": sequence({"nodeName": "root"}),
        },
        ["spec.nodes.middle.steps[0].nodeName"],
    ),
    "unknown-node": (
        {"root": sequence({"serviceName": "add-one"}, {"nodeName": "nowhere"})},
        ["spec.nodes.root.steps[1].nodeName"],
    ),
    "weights-not-100": (
        {
            "root": {
                "routerType": "Splitter",
                "steps": [
                    {"serviceName": "add-one", "weight": 50},
                    {"serviceName": "times-ten", "weight": 40},
                ],
            }
        },
        ["spec.nodes.root.steps"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_GRAPHS))
def test_bad_graph_is_refused_by_field_path(http: httpx.Client, api: ControlApi, case: str) -> None:
    nodes, paths = BAD_GRAPHS[case]
    response = api.apply_text(json.dumps(inference_graph("bad", **nodes)))
    assert refused_paths(response) == sorted(f"InferenceGraph/bad: {path}" for path in paths)
    assert api.http.get("/inferencegraphs/bad").status_code == 404
    assert http.post("/graphs/bad", json=X_BODY).status_code == 404


def test_unknown_graph_is_404(http: httpx.Client) -> None:
    response = http.post("/graphs/no-such-graph", json=X_BODY)
    assert response.status_code == 404, response.text
    assert "no-such-graph" in response.json()["error"]


# -- 3. transformer --------------------------------------------------------------------------------


def test_transformer_scales_inputs_labels_outputs_and_passes_predictor_errors_on(
    gateway: GatewayProcess,
    http: httpx.Client,
    api: ControlApi,
    deploy: Deploy,
    model_repo: Path,
    expected: np.ndarray,
) -> None:
    transformer = {
        "model": {"modelFormat": {"name": "python"}, "storageUri": "tests.gateway_models:ScaleAndLabel"}
    }
    deploy(mlp_isvc("scaled", model_repo, transformer=transformer))

    response = http.post("/v2/models/scaled/infer", json=mlp_body(MLP_X * 255.0))
    np.testing.assert_allclose(output_of(response).astype(np.float32), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(output_of(response, "label"), expected.argmax(axis=1))
    assert response.headers[REVISION] == "scaled-transformer-00001"

    # A wrong shape gets past the transformer; the predictor's 400 and message come back. What the
    # predictor says on its own: asked through the gateway as the transformer asks it (the replica
    # itself takes only the gateway's internal token).
    wrong = mlp_body(np.ones((2, 5), dtype=np.float32))
    direct = http.post("/v2/models/scaled/infer", json=wrong, headers={COMPONENT_HEADER: "predictor"})
    assert direct.status_code == 400, direct.text
    assert direct.headers[REVISION] == "scaled-predictor-00001"
    response = http.post("/v2/models/scaled/infer", json=wrong)
    assert response.status_code == 400, response.text
    assert direct.json()["error"] in response.json()["error"]

    # Only an admin (above) or the service's own transformer may skip it: a client may not.
    made = http.post("/api/v1/tokens", json={"name": "scaled-client", "role": "predictor"})
    assert made.status_code == 201, made.text
    as_client = {"authorization": f"Bearer {made.json()['token']}"}
    skipped = http.post(
        "/v2/models/scaled/infer", json=wrong, headers={COMPONENT_HEADER: "predictor", **as_client}
    )
    assert skipped.status_code == 403 and "own transformer" in skipped.json()["error"], skipped.text
    assert (
        http.post("/v2/models/scaled/infer", json=mlp_body(MLP_X * 255.0), headers=as_client).status_code
        == 200
    )


# -- 4. payload logger -----------------------------------------------------------------------------


LOGGED = "servegate_gateway_logged_events_total"


def logged(url: str, mode: str = "all") -> dict[str, Any]:
    return {"logger": {"mode": mode, "url": url}}


def events_of(sink: HttpSink, service: str) -> list[Received]:
    return [r for r in sink.received() if r.headers.get("ce-inferenceservicename") == service]


def test_payload_logger_sends_request_and_response_events(http: httpx.Client, deploy: Deploy) -> None:
    with HttpSink() as sink:
        deploy(
            python_isvc("logged", "AddOne", predictor=logged(f"{sink.url}/events")),
            python_isvc("logged-requests", "AddOne", predictor=logged(f"{sink.url}/events", "request")),
        )
        sent: dict[str, tuple[bytes, bytes]] = {}
        for i in range(5):
            body = json.dumps({**X_BODY, "id": f"call-{i}"}).encode()
            headers = {"content-type": "application/json", "x-request-id": f"req-{i}"}
            response = http.post("/v2/models/logged/infer", content=body, headers=headers)
            assert response.status_code == 200, response.text
            sent[f"req-{i}"] = (body, response.content)
        until(lambda: len(events_of(sink, "logged")) >= 10, 20, "10 events for 'logged'")
        events = events_of(sink, "logged")
        assert len(events) == 10
        by_type = Counter(e.headers["ce-type"] for e in events)
        assert by_type == {
            "org.kubeflow.serving.inference.request": 5,
            "org.kubeflow.serving.inference.response": 5,
        }
        for event in events:
            assert event.path == "/events"
            assert event.headers["ce-specversion"] == "1.0"
            assert event.headers["ce-component"] == "predictor"
            assert event.headers["ce-endpoint"] == revision("logged", 1)
            request, answer = sent[event.headers["ce-id"]]
            kind = event.headers["ce-type"].rsplit(".", 1)[1]
            assert event.body == (request if kind == "request" else answer), (kind, event.body)
        assert {e.headers["ce-id"] for e in events} == set(sent)

        # Without an x-request-id, a request and its response still share one generated id.
        response = http.post("/v2/models/logged/infer", json=X_BODY)
        assert response.status_code == 200, response.text
        until(lambda: len(events_of(sink, "logged")) >= 12, 20, "2 more events for 'logged'")
        fresh = [e for e in events_of(sink, "logged") if e.headers["ce-id"] not in sent]
        assert len(fresh) == 2 and fresh[0].headers["ce-id"] == fresh[1].headers["ce-id"], fresh

        # mode: request sends requests only.
        for _ in range(3):
            response = http.post("/v2/models/logged-requests/infer", json=X_BODY)
            assert response.status_code == 200, response.text

        def counted(service: str) -> float:
            return metric_total(http.get("/metrics").text, LOGGED, service=service)

        until(lambda: counted("logged-requests") >= 3, 20, "3 logged events for 'logged-requests'")
        time.sleep(0.5)  # room for any response event that should not come
        events = events_of(sink, "logged-requests")
        assert [e.headers["ce-type"] for e in events] == ["org.kubeflow.serving.inference.request"] * 3
        assert counted("logged-requests") == 3
        text = http.get("/metrics").text
        ok = metric_total(text, LOGGED, service="logged", outcome="ok")
        assert ok == 12


def test_payload_logger_sink_down_never_fails_an_answer(http: httpx.Client, deploy: Deploy) -> None:
    down = f"http://127.0.0.1:{free_port()}/events"  # nothing listens there
    deploy(python_isvc("logged-down", "AddOne", predictor=logged(down)))
    for _ in range(5):
        assert v2_result(http.post("/v2/models/logged-down/infer", json=X_BODY)) == (
            "logged-down",
            [2.0, 3.0, 4.0],
        )

    def counted(outcome: str) -> float:
        text = http.get("/metrics").text
        return metric_total(text, LOGGED, service="logged-down", outcome=outcome)

    until(lambda: counted("failed") >= 10, 30, "10 failed events counted")
    assert counted("failed") == 10
    assert counted("ok") == 0
