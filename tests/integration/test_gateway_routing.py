"""`servegate up` as clients see it: every protocol through the gateway (gRPC with compressed, large
and concurrent calls, deadlines and the revision in initial metadata), canary splits, promote and
rollback under load, rollouts, A/B experiments, shadows, concurrency limits and timeouts, manifests
the control API refuses, and a GPU request the machine cannot place.

One gateway serves the whole module (state in a temporary folder); each test applies the services it
needs and deletes them afterwards, so tests share nothing but the gateway and `steady`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving.engines.gpus import detect_gpus
from tests.gateway_helpers import (
    MLP_X,
    REVISION,
    VARIANT,
    X_BODY,
    ControlApi,
    Load,
    condition,
    metric_total,
    mlp_body,
    mlp_isvc,
    python_isvc,
    revision,
    traffic,
)
from tests.servers import GatewayProcess, until

pytestmark = pytest.mark.integration

#: chi-square critical value for 1 degree of freedom at p = 0.001.
CHI2_1DOF_P001 = 10.83

Deploy = Callable[..., None]


@pytest.fixture
def deploy(api: ControlApi) -> Iterator[Deploy]:
    """`deploy(*manifests)`: apply them and wait until each is Ready; they are deleted after the test."""
    names: list[str] = []

    def apply(*manifests: dict[str, Any], wait: bool = True) -> None:
        api.apply(*manifests)
        names.extend(m["metadata"]["name"] for m in manifests)
        if wait:
            for manifest in manifests:
                api.wait_ready(manifest["metadata"]["name"])

    yield apply
    for name in reversed(names):
        api.delete(name)


@pytest.fixture(scope="module")
def expected(model_repo: Path) -> np.ndarray:
    """What ONNX Runtime answers for MLP_X, running the model file directly."""
    session = ort.InferenceSession(str(model_repo / "mlp" / "1" / "model.onnx"))
    return session.run(["output"], {"input": MLP_X})[0]


@pytest.fixture(scope="module")
def steady(api: ControlApi, model_repo: Path) -> Iterator[str]:
    """A service that stays up for the module: bad manifests must not touch it."""
    api.apply(mlp_isvc("steady", model_repo))
    api.wait_ready("steady")
    yield "steady"
    api.delete("steady")


def output_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


# -- 1. protocols ----------------------------------------------------------------------------------


def test_every_protocol_through_the_gateway_matches_onnxruntime(
    gateway: GatewayProcess, http: httpx.Client, deploy: Deploy, model_repo: Path, expected: np.ndarray
) -> None:
    deploy(mlp_isvc("protocols", model_repo))
    rev = revision("protocols", 1)

    # V2 JSON
    response = http.post("/v2/models/protocols/infer", json=mlp_body())
    np.testing.assert_allclose(output_of(response), expected, rtol=1e-5, atol=1e-6)
    assert response.headers[REVISION] == rev

    # V1
    response = http.post("/v1/models/protocols:predict", json={"instances": MLP_X.tolist()})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.asarray(response.json()["predictions"]), expected, rtol=1e-5, atol=1e-6)
    assert response.headers[REVISION] == rev

    # V2 binary tensors, with Triton's own HTTP client
    client = httpclient.InferenceServerClient(gateway.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("protocols")
        metadata = client.get_model_metadata("protocols", headers=gateway.headers)
        assert metadata["name"] == "protocols"
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]
        assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}]
        inp = httpclient.InferInput("input", list(MLP_X.shape), "FP32")
        inp.set_data_from_numpy(MLP_X, binary_data=True)
        out = httpclient.InferRequestedOutput("output", binary_data=True)
        result = client.infer("protocols", [inp], outputs=[out], headers=gateway.headers)
        np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-6)
        assert not client.is_model_ready("no-such-model")
        with pytest.raises(InferenceServerException) as info:
            client.infer("no-such-model", [inp], headers=gateway.headers)
        assert info.value.status() == "404"
    finally:
        client.close()

    # gRPC, with Triton's own gRPC client
    grpc = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        assert grpc.is_server_live() and grpc.is_server_ready()
        assert grpc.is_model_ready("protocols")
        metadata = grpc.get_model_metadata("protocols", headers=gateway.headers, as_json=True)
        assert metadata["name"] == "protocols"
        assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
            ("input", "FP32", ["-1", "8"])
        ]
        inp = grpcclient.InferInput("input", list(MLP_X.shape), "FP32")
        inp.set_data_from_numpy(MLP_X)
        result = grpc.infer("protocols", [inp], headers=gateway.headers)
        np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-6)
        with pytest.raises(InferenceServerException) as info:
            grpc.infer("no-such-model", [inp], headers=gateway.headers)
        assert info.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException) as info:
            grpc.get_model_metadata("no-such-model", headers=gateway.headers)
        assert info.value.status() == "StatusCode.NOT_FOUND"
    finally:
        grpc.close()

    # an unknown model over REST: 404 with an error message, on every model path
    for method, path in [
        ("POST", "/v2/models/no-such-model/infer"),
        ("GET", "/v2/models/no-such-model"),
        ("POST", "/v1/models/no-such-model:predict"),
    ]:
        response = http.request(method, path, json=mlp_body())
        assert response.status_code == 404, (path, response.text)
        assert "no-such-model" in response.json()["error"]


# -- 1b. gRPC through the gateway (an ASGI app over HTTP/2, replicas over HTTP/1.1) ---------------


@pytest.fixture(scope="module")
def grpc_services(api: ControlApi, model_repo: Path) -> Iterator[tuple[str, str]]:
    """("grpc-mlp", "grpc-slow"): the ONNX MLP, and a python model taking 0.5 s a call (Sleeper)."""
    api.apply(mlp_isvc("grpc-mlp", model_repo), python_isvc("grpc-slow", "Sleeper"))
    try:
        api.wait_ready("grpc-mlp")
        api.wait_ready("grpc-slow")
        yield "grpc-mlp", "grpc-slow"
    finally:
        api.delete("grpc-mlp")
        api.delete("grpc-slow")


def run_mlp(model_repo: Path, x: np.ndarray) -> np.ndarray:
    """What ONNX Runtime answers for `x`, running the MLP's file directly."""
    session = ort.InferenceSession(
        str(model_repo / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(["output"], {"input": x})[0]


def mlp_input(x: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_grpc_compressed_and_large_requests_through_the_gateway(
    gateway: GatewayProcess, grpc_services: tuple[str, str], model_repo: Path
) -> None:
    mlp, _ = grpc_services
    rows = np.random.default_rng(3).normal(size=(64, MLP_X.shape[1])).astype(np.float32)
    compressible = np.repeat(rows, 64, axis=0)  # 4096 rows, a message gzip shrinks
    # 4 MiB in, 2 MiB out: many HTTP/2 DATA frames and window updates each way.
    large = np.random.default_rng(4).normal(size=(4 * 1024 * 1024 // (4 * MLP_X.shape[1]), MLP_X.shape[1]))
    large = large.astype(np.float32)
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        for algorithm in ("gzip", "deflate"):
            result = client.infer(
                mlp, [mlp_input(compressible)], headers=gateway.headers, compression_algorithm=algorithm
            )
            np.testing.assert_allclose(
                result.as_numpy("output"), run_mlp(model_repo, compressible), rtol=1e-5, atol=1e-6
            )
        result = client.infer(mlp, [mlp_input(large)], headers=gateway.headers)
        assert result.as_numpy("output").shape == (large.shape[0], 4)
        np.testing.assert_allclose(
            result.as_numpy("output"), run_mlp(model_repo, large), rtol=1e-5, atol=1e-6
        )
    finally:
        client.close()


def test_grpc_replies_carry_the_revision_in_initial_metadata(
    gateway: GatewayProcess, grpc_services: tuple[str, str], expected: np.ndarray
) -> None:
    mlp, _ = grpc_services
    request = pb.ModelInferRequest(
        model_name=mlp,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(MLP_X.shape))
        ],
        raw_input_contents=[MLP_X.tobytes()],
    )
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply, call = stub.ModelInfer.with_call(request, metadata=tuple(gateway.headers.items()), timeout=30)
        ready, ready_call = stub.ModelReady.with_call(
            pb.ModelReadyRequest(name=mlp), metadata=tuple(gateway.headers.items()), timeout=30
        )
    assert dict(call.initial_metadata())[REVISION] == revision(mlp, 1)
    assert call.code() is grpc.StatusCode.OK
    output = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)
    assert ready.ready
    assert dict(ready_call.initial_metadata())[REVISION] == revision(mlp, 1)


def test_grpc_deadline_shorter_than_the_model_is_deadline_exceeded(
    gateway: GatewayProcess, grpc_services: tuple[str, str]
) -> None:
    _, slow = grpc_services
    x = grpcclient.InferInput("x", [3], "FP32")
    x.set_data_from_numpy(np.array([1.0, 2.0, 3.0], dtype=np.float32))
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer(slow, [x], headers=gateway.headers, client_timeout=0.1)  # the model takes 0.5 s
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        # The abandoned call leaves the connection and the gateway serving.
        result = client.infer(slow, [x], headers=gateway.headers, client_timeout=30)
        assert result.as_numpy("y").tolist() == [2.0, 4.0, 6.0]
    finally:
        client.close()


async def test_grpc_concurrent_calls_on_one_channel_all_answer_right(
    gateway: GatewayProcess, grpc_services: tuple[str, str], model_repo: Path
) -> None:
    mlp, _ = grpc_services
    batches = np.random.default_rng(5).normal(size=(64, 2, MLP_X.shape[1])).astype(np.float32)
    wanted = run_mlp(model_repo, batches.reshape(-1, MLP_X.shape[1])).reshape(64, 2, -1)
    client = grpcaio.InferenceServerClient(gateway.grpc_url)
    try:
        results = await asyncio.gather(
            *(
                client.infer(mlp, [mlp_input(batch)], headers=gateway.headers, request_id=str(i))
                for i, batch in enumerate(batches)
            )
        )
    finally:
        await client.close()
    for i, result in enumerate(results):
        assert result.get_response().id == str(i)
        np.testing.assert_allclose(result.as_numpy("output"), wanted[i], rtol=1e-5, atol=1e-6)


# -- 2. canary -------------------------------------------------------------------------------------


def test_canary_splits_traffic_seventy_thirty(
    http: httpx.Client, api: ControlApi, deploy: Deploy, model_repo: Path
) -> None:
    deploy(mlp_isvc("canary", model_repo))
    r1, r2 = revision("canary", 1), revision("canary", 2)
    api.apply(mlp_isvc("canary", model_repo, env={"MARK": "2"}, predictor={"canaryTrafficPercent": 30}))
    status = api.wait_traffic("canary", {r1: 70, r2: 30})

    predictor = status["components"]["predictor"]
    assert predictor["latestCreatedRevision"] == r2
    assert predictor["latestReadyRevision"] == r2
    assert predictor["latestRolledoutRevision"] == r1
    assert condition(status, "Ready")["status"] == "True"
    latest = {t["revisionName"]: t["latestRevision"] for t in predictor["traffic"]}
    assert latest == {r1: False, r2: True}

    counts: Counter[str] = Counter()
    for _ in range(600):
        response = http.post("/v2/models/canary/infer", json=mlp_body())
        assert response.status_code == 200, response.text
        counts[response.headers[REVISION]] += 1
    assert set(counts) == {r1, r2}
    chi2 = sum((counts[rev] - 600 * share) ** 2 / (600 * share) for rev, share in ((r1, 0.7), (r2, 0.3)))
    assert chi2 < CHI2_1DOF_P001, f"split {dict(counts)} is not 70/30 (chi-square {chi2:.1f})"


# -- 3, 4. moving traffic under load ---------------------------------------------------------------


def test_promote_then_rollback_under_load_fails_no_request(
    gateway: GatewayProcess, api: ControlApi, deploy: Deploy, model_repo: Path
) -> None:
    deploy(mlp_isvc("flip", model_repo))
    r1, r2 = revision("flip", 1), revision("flip", 2)
    api.apply(mlp_isvc("flip", model_repo, env={"MARK": "2"}, predictor={"canaryTrafficPercent": 20}))
    api.wait_traffic("flip", {r1: 80, r2: 20})

    with Load(gateway.url, "flip", mlp_body(), concurrency=8, token=gateway.token) as load:
        load.wait_count(100)
        response = api.promote("flip")
        assert response.status_code == 200, response.text
        load.wait_for(r2)
        status = api.status("flip")
        predictor = status["components"]["predictor"]
        assert traffic(status) == {r2: 100}
        assert predictor["latestRolledoutRevision"] == r2
        assert predictor["previousRolledoutRevision"] == r1

        response = api.rollback("flip")
        assert response.status_code == 200, response.text
        load.wait_for(r1)
        status = api.status("flip")
        predictor = status["components"]["predictor"]
        assert traffic(status) == {r1: 100}
        assert predictor["latestRolledoutRevision"] == r1
        assert predictor["previousRolledoutRevision"] == r2
        load.wait_count(100)

    outcomes = load.snapshot()
    assert load.failures() == []
    assert len(outcomes) > 300
    assert {o.revision for o in outcomes} == {r1, r2}


def test_rollout_without_canary_moves_traffic_only_once_ready(
    gateway: GatewayProcess, api: ControlApi, deploy: Deploy
) -> None:
    deploy(python_isvc("roll", "SlowStart"))
    r1, r2 = revision("roll", 1), revision("roll", 2)

    with Load(gateway.url, "roll", X_BODY, concurrency=8, token=gateway.token) as load:
        load.wait_count(50)
        # The new revision takes 3 s to load: until it is ready, r1 keeps all the traffic.
        api.apply(python_isvc("roll", "SlowStart", env={"LOAD_SECONDS": "3"}))
        checked = 0
        while True:
            answered = load.snapshot()
            status = api.status("roll")
            predictor = status["components"]["predictor"]
            if predictor["latestReadyRevision"] == r2:
                break
            if predictor["latestCreatedRevision"] == r2:
                assert traffic(status) == {r1: 100}
                assert predictor["latestRolledoutRevision"] == r1
                # Still answering from r1, but not Ready until the newest revision is (KServe's rule).
                ready = condition(status, "PredictorReady")
                assert ready["status"] == "False" and f"serving from {r1}" in ready["message"]
                checked += 1
            early = [o for o in answered if o.revision == r2]
            assert early == [], f"{len(early)} answers from {r2} before it was ready"
            time.sleep(0.2)
        assert checked >= 5, "the new revision became ready too soon to watch the rollout"
        load.wait_for(r2)
        load.wait_count(50)

    status = api.status("roll")
    predictor = status["components"]["predictor"]
    assert traffic(status) == {r2: 100}
    assert predictor["latestRolledoutRevision"] == r2
    assert predictor["previousRolledoutRevision"] == r1
    assert load.failures() == []
    assert len(load.snapshot()) > 200


# -- 5. A/B ----------------------------------------------------------------------------------------


def test_ab_experiment_sticks_by_header_and_by_cookie(
    gateway: GatewayProcess, http: httpx.Client, api: ControlApi, deploy: Deploy, model_repo: Path
) -> None:
    variants = [{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50, "service": "b"}]
    deploy(mlp_isvc("b", model_repo, env={"MARK": "b"}))
    deploy(mlp_isvc("ab", model_repo, experiment={"variants": variants, "stickyBy": "header:x-user-id"}))
    answered_by = {"control": revision("ab", 1), "treatment": revision("b", 1)}

    def variant(headers: dict[str, str] | None = None, client: httpx.Client = http) -> httpx.Response:
        response = client.post("/v2/models/ab/infer", json=mlp_body(), headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers[REVISION] == answered_by[response.headers[VARIANT]]
        return response

    # One user keeps their variant.
    for user in ("alice", "bob", "carol"):
        seen = {variant({"x-user-id": user}).headers[VARIANT] for _ in range(20)}
        assert len(seen) == 1, f"user {user} saw variants {seen}"

    # Many users split both ways, each the same way again.
    users = [f"user-{i}" for i in range(200)]
    first = {u: variant({"x-user-id": u}).headers[VARIANT] for u in users}
    split = Counter(first.values())
    assert 60 <= split["control"] <= 140 and 60 <= split["treatment"] <= 140, split
    again = {u: variant({"x-user-id": u}).headers[VARIANT] for u in users[:50]}
    assert again == {u: first[u] for u in users[:50]}

    # gRPC follows the same assignment; a variant served by another service answers under its name.
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    tensor = grpcclient.InferInput("input", list(MLP_X.shape), "FP32")
    tensor.set_data_from_numpy(MLP_X)
    for user in users[:20]:
        result = client.infer("ab", [tensor], headers={**gateway.headers, "x-user-id": user})
        expected_model = "b" if first[user] == "treatment" else "ab"
        assert result.get_response().model_name == expected_model
    client.close()

    # By cookie: a first visit gets one; sending it back keeps the variant.
    experiment = {"variants": variants, "stickyBy": "cookie:sg-user"}
    api.apply(mlp_isvc("ab", model_repo, experiment=experiment))

    def fresh_visit() -> httpx.Response:
        with httpx.Client(
            base_url=gateway.url, timeout=30.0, trust_env=False, headers=gateway.headers
        ) as client:
            return variant(client=client)

    response = until(lambda: (r := fresh_visit()).cookies.get("sg-user") and r, 30, "a sticky cookie")
    cookie = response.cookies["sg-user"]
    assigned = response.headers[VARIANT]
    for _ in range(20):
        response = variant({"cookie": f"sg-user={cookie}"})
        assert response.headers[VARIANT] == assigned
        assert "sg-user" not in response.cookies  # no new cookie for a known visitor
    visits = Counter(fresh_visit().headers[VARIANT] for _ in range(60))
    assert set(visits) == {"control", "treatment"}, visits


# -- 6. shadow -------------------------------------------------------------------------------------


def test_failing_shadow_never_affects_the_primary(
    gateway: GatewayProcess, http: httpx.Client, deploy: Deploy, model_repo: Path, expected: np.ndarray
) -> None:
    deploy(python_isvc("broken", "AlwaysFails"))
    assert http.post("/v2/models/broken/infer", json=X_BODY).status_code == 500
    deploy(mlp_isvc("primary", model_repo, shadow={"service": "broken", "percent": 100}))

    def shadow_failures() -> float:
        text = http.get("/metrics").text
        return metric_total(
            text, "servegate_gateway_shadow_requests_total", service="primary", status="model_failure"
        )

    before = shadow_failures()
    for _ in range(30):
        response = http.post("/v2/models/primary/infer", json=mlp_body())
        np.testing.assert_allclose(output_of(response), expected, rtol=1e-5, atol=1e-6)
        assert response.headers[REVISION] == revision("primary", 1)
    until(lambda: shadow_failures() - before >= 30, 20, "30 failed shadow requests counted")


# -- 7. concurrency limit and timeout --------------------------------------------------------------


def test_container_concurrency_one_queues_requests_at_the_gateway(
    gateway: GatewayProcess, http: httpx.Client, deploy: Deploy
) -> None:
    # One replica, held there (the autoscaler would otherwise add replicas for the queue).
    pinned = {"containerConcurrency": 1, "minReplicas": 1, "maxReplicas": 1}
    deploy(python_isvc("single", "Sleeper", predictor=pinned))
    rev = revision("single", 1)

    def infer(_: int) -> httpx.Response:
        return http.post("/v2/models/single/infer", json=X_BODY)

    queued = outstanding = 0.0
    started = time.monotonic()
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(infer, i) for i in range(5)]
        while not all(f.done() for f in futures):
            text = http.get("/metrics").text
            queued = max(queued, metric_total(text, "servegate_gateway_queue_depth", revision=rev))
            outstanding = max(
                outstanding, metric_total(text, "servegate_gateway_outstanding_requests", revision=rev)
            )
            time.sleep(0.05)
    elapsed = time.monotonic() - started
    for future in futures:
        response = future.result()
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0]
    assert outstanding == 1, "a replica with containerConcurrency 1 had more than one request"
    assert queued >= 1, "no request waited in the gateway's queue"
    assert elapsed >= 5 * 0.5 * 0.9, f"5 requests of 0.5 s took only {elapsed:.2f}s one at a time"


def test_request_past_the_timeout_gets_504(
    gateway: GatewayProcess, http: httpx.Client, deploy: Deploy
) -> None:
    deploy(python_isvc("too-slow", "Sleeper", env={"SLEEP_SECONDS": "3"}, predictor={"timeout": 1}))
    started = time.monotonic()
    response = http.post("/v2/models/too-slow/infer", json=X_BODY)
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.json()["error"]
    assert elapsed < 2.5, f"the 1 s timeout answered after {elapsed:.2f}s"

    # Over gRPC the gateway answers the service's timeout itself, as DEADLINE_EXCEEDED.
    x = grpcclient.InferInput("x", [3], "FP32")
    x.set_data_from_numpy(np.array([1.0, 2.0, 3.0], dtype=np.float32))
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer("too-slow", [x], headers=gateway.headers, client_timeout=30)
    finally:
        client.close()
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "did not answer within the service's timeout" in info.value.message()


# -- 8. bad manifests ------------------------------------------------------------------------------


def _steady(model_repo: Path, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    doc = copy.deepcopy(mlp_isvc("steady", model_repo))
    change(doc)
    return doc


def _variants(*weights_and_services: tuple[int, str | None]) -> dict[str, Any]:
    variants = []
    for i, (weight, service) in enumerate(weights_and_services):
        variants.append({"name": f"v{i}", "weight": weight, **({"service": service} if service else {})})
    return {"variants": variants}


BAD = {
    "wrong-type": (
        lambda d: d["spec"]["predictor"].update(minReplicas="many"),
        ["spec.predictor.minReplicas"],
    ),
    "missing-predictor": (lambda d: d.update(spec={}), ["spec.predictor"]),
    "canary-150": (
        lambda d: d["spec"]["predictor"].update(canaryTrafficPercent=150),
        ["spec.predictor.canaryTrafficPercent"],
    ),
    "weights-not-100": (
        lambda d: d["spec"].update(experiment=_variants((60, None), (60, "steady"))),
        ["spec.experiment.variants"],
    ),
    "unknown-format": (
        lambda d: d["spec"]["predictor"]["model"]["modelFormat"].update(name="caffe"),
        ["spec.predictor.model.modelFormat.name"],
    ),
    "unknown-service": (
        lambda d: d["spec"].update(experiment=_variants((50, None), (50, "no-such-service"))),
        ["spec.experiment.variants[1].service"],
    ),
    "several": (
        lambda d: (
            d["spec"]["predictor"].update(minReplicas="many", canaryTrafficPercent=150),
            d["spec"]["predictor"]["model"]["modelFormat"].update(name="caffe"),
            d["spec"].update(experiment=_variants((60, None), (60, "steady"))),
        ),
        [
            "spec.predictor.minReplicas",
            "spec.predictor.canaryTrafficPercent",
            "spec.predictor.model.modelFormat.name",
            "spec.experiment.variants",
        ],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_manifest_is_refused_by_field_path_and_changes_nothing(
    http: httpx.Client, api: ControlApi, steady: str, model_repo: Path, case: str
) -> None:
    change, paths = BAD[case]
    before = api.get(steady)

    response = api.apply_text(json.dumps(_steady(model_repo, change)))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"]
    found = [p["path"] for p in body["problems"]]
    assert all(p["message"] for p in body["problems"])
    assert sorted(found) == sorted(f"InferenceService/steady: {path}" for path in paths), found

    after = api.get(steady)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"] == before["spec"]
    predictor = after["status"]["components"]["predictor"]
    assert predictor["latestCreatedRevision"] == revision(steady, 1)
    assert traffic(after["status"]) == {revision(steady, 1): 100}
    response = http.post(f"/v2/models/{steady}/infer", json=mlp_body())
    assert response.status_code == 200, response.text
    assert response.headers[REVISION] == revision(steady, 1)


# -- 9. a GPU the machine does not have ------------------------------------------------------------


def test_gpu_request_without_gpus_is_not_schedulable(
    http: httpx.Client, api: ControlApi, deploy: Deploy, steady: str, model_repo: Path
) -> None:
    # One more GPU than the machine has (none, on a CPU-only machine).
    gpus = len(detect_gpus()) + 1
    resources = {"resources": {"limits": {"nvidia.com/gpu": gpus}}}
    deploy(mlp_isvc("needs-gpu", model_repo, model=resources), wait=False)

    def not_schedulable() -> dict[str, Any] | None:
        status = api.status("needs-gpu")
        return status if condition(status, "PredictorReady").get("reason") == "NotSchedulable" else None

    status = until(not_schedulable, 30, "PredictorReady to say NotSchedulable")
    predictor_ready = condition(status, "PredictorReady")
    assert predictor_ready["status"] == "False"
    assert "GPU" in predictor_ready["message"] and "nvidia.com/gpu" in predictor_ready["message"]
    assert condition(status, "Ready")["status"] == "False"
    pool = status["components"]["predictor"]["replicas"][revision("needs-gpu", 1)]
    assert pool["schedulable"] is False and pool["ready"] == 0

    response = http.post("/v2/models/needs-gpu/infer", json=mlp_body(), timeout=10.0)
    assert response.status_code == 503, response.text
    assert response.json()["error"]

    # The gateway itself, and every other service, are fine.
    assert http.get("/v2/health/ready").status_code == 200
    response = http.post(f"/v2/models/{steady}/infer", json=mlp_body())
    assert response.status_code == 200, response.text


def test_custom_container_is_accepted_but_not_schedulable_on_processes(
    http: httpx.Client, api: ControlApi, deploy: Deploy
) -> None:
    custom = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "custom"},
        "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "me/model:1"}]}},
    }
    deploy(custom, wait=False)

    def not_schedulable() -> dict[str, Any] | None:
        status = api.status("custom")
        return status if condition(status, "PredictorReady").get("reason") == "NotSchedulable" else None

    status = until(not_schedulable, 30, "PredictorReady to say NotSchedulable")
    assert "me/model:1" in condition(status, "PredictorReady")["message"]
    assert http.post("/v2/models/custom/infer", json=mlp_body(), timeout=10.0).status_code == 503


def test_reapplying_what_get_returns_is_unchanged(api: ControlApi, model_repo: Path) -> None:
    api.apply(mlp_isvc("same", model_repo))
    try:
        api.wait_ready("same")
        elsewhere = mlp_isvc("same", model_repo)
        elsewhere["metadata"]["namespace"] = "prod"
        refused = api.apply_text(json.dumps(elsewhere))
        assert refused.status_code == 400
        assert [p["path"] for p in refused.json()["problems"]] == [
            "InferenceService/same: metadata.namespace"
        ]
        exported = api.get("same")  # metadata.generation, creationTimestamp and status included
        result = api.apply(exported)
        assert result["results"] == [{"kind": "InferenceService", "name": "same", "action": "unchanged"}]
        assert api.get("same")["metadata"]["generation"] == 1
    finally:
        api.delete("same")


def test_a_latest_revision_that_cannot_load_leaves_the_service_not_ready(
    api: ControlApi, gateway: GatewayProcess, model_repo: Path
) -> None:
    api.apply(mlp_isvc("broken", model_repo))
    try:
        api.wait_ready("broken")
        bad = mlp_isvc("broken", model_repo, model={"storageUri": str(model_repo / "missing")})
        api.apply(bad)

        def failed() -> dict[str, Any] | None:
            status = api.status("broken")
            ready = condition(status, "PredictorReady")
            return status if ready["status"] == "False" and ready["reason"] == "RevisionFailed" else None

        status = until(failed, 30, "the new revision's failure in the status")
        assert condition(status, "Ready")["status"] == "False"
        assert "serving from broken-predictor-00001" in condition(status, "PredictorReady")["message"]
        assert status["modelStatus"]["transitionStatus"] == "BlockedByFailedLoad"
        # The old revision still answers.
        reply = httpx.post(
            f"{gateway.url}/v2/models/broken/infer", json=mlp_body(), timeout=10, headers=gateway.headers
        )
        assert reply.status_code == 200
        assert reply.headers["x-servegate-revision"] == "broken-predictor-00001"
    finally:
        api.delete("broken")
