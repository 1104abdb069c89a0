"""Dynamic batching on a real replica: merging, each caller's rows, failure fan-out, isolation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from predictors.examples import make_mlp_onnx, mlp_forward
from tests.conftest import MLP_SIZES
from tests.servers import ReplicaProcess

MAX_BATCH = 8


@pytest.fixture(scope="module")
def batched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProcess]:
    mlp = make_mlp_onnx(Path(tmp_path_factory.mktemp("batching")) / "mlp.onnx", MLP_SIZES)
    with ReplicaProcess(
        "--max-batch-size", str(MAX_BATCH), "--max-latency-ms", "200",
        "--model-name", "mlp", "--model-uri", str(mlp),
        "--model-name", "probe", "--model-uri", "tests.probe_models:BatchProbe",
        "--model-name", "flaky", "--model-uri", "tests.probe_models:Flaky",
        grpc=False,
    ) as server:  # fmt: skip
        server.wait_ready()
        yield server


def _body(x: np.ndarray, name: str = "x") -> dict:
    return {
        "inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }


def _output(response: httpx.Response, name: str) -> np.ndarray:
    assert response.status_code == 200, response.text
    for out in response.json()["outputs"]:
        if out["name"] == name:
            return np.asarray(out["data"]).reshape(out["shape"])
    raise AssertionError(f"no output {name} in {response.text}")


async def _post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        return list(await asyncio.gather(*(client.post(url, json=body) for body in bodies)))


async def test_each_caller_gets_exactly_its_rows(batched: ReplicaProcess) -> None:
    rng = np.random.default_rng(7)
    requests = [rng.normal(size=(1 + i % 3, MLP_SIZES[0])).astype(np.float32) for i in range(24)]
    url = f"{batched.url}/v2/models/mlp/infer"
    responses = await _post_all(url, [_body(x, "input") for x in requests])
    for x, response in zip(requests, responses, strict=True):
        np.testing.assert_allclose(
            _output(response, "output"), mlp_forward(x, MLP_SIZES), rtol=1e-5, atol=1e-5
        )

    metrics = httpx.get(f"{batched.url}/metrics").text
    batch = {s.name: s.value for f in text_string_to_metric_families(metrics) for s in f.samples
             if f.name == "servegate_batch_size" and s.labels.get("model") == "mlp"}  # fmt: skip
    rows = sum(len(x) for x in requests)
    assert batch["servegate_batch_size_sum"] == rows
    assert batch["servegate_batch_size_count"] < len(requests), "concurrent requests were never merged"


async def test_batches_merge_up_to_the_maximum(batched: ReplicaProcess) -> None:
    xs = [np.full((1, 4), i, dtype=np.float32) for i in range(3 * MAX_BATCH)]
    responses = await _post_all(f"{batched.url}/v2/models/probe/infer", [_body(x) for x in xs])
    seen = []
    for x, response in zip(xs, responses, strict=True):
        np.testing.assert_array_equal(_output(response, "y"), x)
        seen.append(int(_output(response, "rows")[0]))
    assert max(seen) <= MAX_BATCH
    assert max(seen) > 1


async def test_requests_of_different_shapes_are_not_merged(batched: ReplicaProcess) -> None:
    narrow = [np.full((1, 3), i, dtype=np.float32) for i in range(5)]
    wide = [np.full((1, 5), -i, dtype=np.float32) for i in range(3)]
    responses = await _post_all(f"{batched.url}/v2/models/probe/infer", [_body(x) for x in narrow + wide])
    for x, response in zip(narrow + wide, responses, strict=True):
        np.testing.assert_array_equal(_output(response, "y"), x)
    assert all(_output(r, "rows")[0] <= len(narrow) for r in responses[: len(narrow)])
    assert all(_output(r, "rows")[0] <= len(wide) for r in responses[len(narrow) :])


async def test_a_failing_batch_fails_each_of_its_requests(batched: ReplicaProcess) -> None:
    # MAX_BATCH single-row requests arriving within the 200 ms window form one full batch.
    xs = [np.full((1, 2), 1.0, dtype=np.float32) for _ in range(MAX_BATCH)]
    xs[3] = np.full((1, 2), -1.0, dtype=np.float32)
    responses = await _post_all(f"{batched.url}/v2/models/flaky/infer", [_body(x) for x in xs])
    for response in responses:
        assert response.status_code == 500
        assert "negative input in the batch" in response.json()["error"]
    # The model and the batcher are fine afterwards.
    ok = httpx.post(
        f"{batched.url}/v2/models/flaky/infer", json=_body(np.ones((2, 2), np.float32)), timeout=10
    )
    np.testing.assert_array_equal(_output(ok, "y"), np.full((2, 2), 2.0))


async def test_invalid_requests_do_not_touch_their_neighbours(batched: ReplicaProcess) -> None:
    good = [np.full((1, MLP_SIZES[0]), i / 10, dtype=np.float32) for i in range(6)]
    bad = [np.ones((1, MLP_SIZES[0] + 1), dtype=np.float32) for _ in range(3)]
    bodies = [_body(x, "input") for x in good] + [_body(x, "input") for x in bad]
    responses = await _post_all(f"{batched.url}/v2/models/mlp/infer", bodies)
    for x, response in zip(good, responses, strict=False):
        np.testing.assert_allclose(
            _output(response, "output"), mlp_forward(x, MLP_SIZES), rtol=1e-5, atol=1e-5
        )
    for response in responses[len(good) :]:
        assert response.status_code == 400
        assert "shape" in response.json()["error"]
