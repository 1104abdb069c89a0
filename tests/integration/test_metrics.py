"""`/metrics` on a real replica: present, labelled as documented, and moving with traffic."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MLP_SIZES
from tests.servers import ReplicaProcess, until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _v2_body(rows: int) -> dict:
    data = np.ones((rows, MLP_SIZES[0]), dtype=np.float32)
    return {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": list(data.shape), "data": data.ravel().tolist()}
        ]
    }


def test_requests_latencies_and_batches_are_counted(replica: ReplicaProcess) -> None:
    before = scrape(replica.url)
    for _ in range(3):
        assert httpx.post(f"{replica.url}/v2/models/mlp/infer", json=_v2_body(2)).status_code == 200
    assert (
        httpx.post(f"{replica.url}/v1/models/mlp:predict", json={"instances": [[0.0] * 8]}).status_code == 200
    )
    assert httpx.post(f"{replica.url}/v2/models/mlp/infer", json={"inputs": []}).status_code == 400
    assert httpx.post(f"{replica.url}/v2/models/nope/infer", json=_v2_body(1)).status_code == 404
    with grpcclient.InferenceServerClient(replica.grpc_url) as client:
        tensor = grpcclient.InferInput("input", [1, MLP_SIZES[0]], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, MLP_SIZES[0]), np.float32))
        client.infer("mlp", [tensor])
    after = scrape(replica.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("servegate_requests_total", model="mlp", protocol="v2", status="ok") == 3
    assert moved("servegate_requests_total", model="mlp", protocol="v1", status="ok") == 1
    assert moved("servegate_requests_total", model="mlp", protocol="grpc", status="ok") == 1
    assert moved("servegate_requests_total", model="mlp", protocol="v2", status="invalid_input") == 1
    # Unknown model names are not turned into labels.
    assert moved("servegate_requests_total", model="", protocol="v2", status="not_found") == 1
    assert not any(("model", "nope") in labels for _, labels in after)

    assert moved("servegate_request_duration_seconds_count", model="mlp", protocol="v2") == 4
    assert moved("servegate_request_duration_seconds_sum", model="mlp", protocol="v2") > 0
    assert moved("servegate_queue_duration_seconds_count", model="mlp") == 5
    assert moved("servegate_compute_duration_seconds_count", model="mlp") == 5
    assert moved("servegate_compute_duration_seconds_sum", model="mlp") > 0
    assert moved("servegate_batch_size_count", model="mlp") == 5
    assert moved("servegate_batch_size_sum", model="mlp") == 3 * 2 + 1 + 1
    assert value(after, "servegate_inflight_requests", model="mlp") == 0
    assert value(after, "servegate_model_state", model="mlp", version="1", state="READY") == 1
    assert value(after, "servegate_model_state", model="mlp", version="1", state="FAILED") == 0


def test_readiness_and_model_state_follow_the_load_state(tmp_path: Path) -> None:
    with ReplicaProcess(
        "--model-name", "broken", "--model-uri", str(tmp_path / "missing.onnx"),
        "--model-name", "doubler", "--model-uri", "tests.python_models:Doubler",
        "--model-control", "explicit", grpc=False,
    ) as server:  # fmt: skip
        server.wait_live()
        until(lambda: value(scrape(server.url), "servegate_model_state", model="doubler", version="1",
                               state="READY") == 1)  # fmt: skip
        samples = scrape(server.url)
        assert value(samples, "servegate_model_state", model="broken", version="1", state="FAILED") == 1
        assert value(samples, "servegate_model_state", model="broken", version="1", state="READY") == 0
        assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
        assert httpx.get(f"{server.url}/v2/models/doubler/ready").status_code == 200

        assert httpx.post(f"{server.url}/v2/repository/models/broken/unload").status_code == 200
        samples = scrape(server.url)
        assert value(samples, "servegate_model_state", model="broken", version="1", state="UNAVAILABLE") == 1
        # An unloaded model no longer holds the replica back.
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
