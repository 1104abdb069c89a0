"""A replica's life through the CLI: graceful shutdown, readiness while loading, storage, reloads."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from predictors.examples import make_mlp_onnx, mlp_forward
from tests.conftest import MLP_SIZES
from tests.servers import FileServer, ReplicaProcess, serve_files, until

pytestmark = pytest.mark.integration

SLOW = ("--model-name", "slow", "--model-uri", "tests.python_models:Slow", "--instances", "8")
X = np.arange(3 * MLP_SIZES[0], dtype=np.float32).reshape(3, MLP_SIZES[0]) / 10


# -- helpers -----------------------------------------------------------------------------------------


def status(url: str) -> int | None:
    """The status of GET `url` on a fresh connection; None when the connection is refused or reset
    (a connection still in the accept queue when the server closes its socket gets a reset)."""
    try:
        return httpx.get(url, timeout=2.0).status_code
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return None


def metric(url: str, sample_name: str, **labels: str) -> float:
    """The sum of the samples of `sample_name` at `url`/metrics whose labels include `labels`."""
    text = httpx.get(f"{url}/metrics", timeout=2.0).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name and labels.items() <= sample.labels.items()
    )


def index(url: str) -> dict[str, dict[str, Any]]:
    response = httpx.post(f"{url}/v2/repository/index", timeout=2.0)
    assert response.status_code == 200, response.text
    return {entry["name"]: entry for entry in response.json()}


def infer_slow(url: str, values: list[float], **parameters: float) -> httpx.Response:
    body: dict[str, Any] = {
        "inputs": [{"name": "x", "shape": [len(values)], "datatype": "FP32", "data": values}]
    }
    if parameters:
        body["parameters"] = parameters
    return httpx.post(f"{url}/v2/models/slow/infer", json=body, timeout=20.0)


def infer_slow_grpc(grpc_url: str, values: list[float]) -> np.ndarray:
    with grpcclient.InferenceServerClient(grpc_url) as client:
        tensor = grpcclient.InferInput("x", [len(values)], "FP32")
        tensor.set_data_from_numpy(np.array(values, dtype=np.float32))
        return client.infer("slow", [tensor], client_timeout=20.0).as_numpy("y")


def infer_mlp(url: str, model: str, x: np.ndarray = X) -> httpx.Response:
    body = {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    return httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=10.0)


def mlp_output(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def assert_mlp(response: httpx.Response, seed: int) -> None:
    np.testing.assert_allclose(mlp_output(response), mlp_forward(X, MLP_SIZES, seed), rtol=1e-5, atol=1e-5)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2.0).close()
    except ConnectionRefusedError:
        return True
    return False


# -- graceful shutdown -------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_in_flight_requests_then_exits_0(sig: signal.Signals) -> None:
    with ReplicaProcess(*SLOW) as server, ThreadPoolExecutor(max_workers=4) as pool:
        server.wait_ready()
        rest: list[Future[httpx.Response]] = [pool.submit(infer_slow, server.url, [i, -i]) for i in range(3)]
        grpc_call = pool.submit(infer_slow_grpc, server.grpc_url, [5.0, 6.0])
        sent = len(rest) + 1
        until(
            lambda: metric(server.url, "servegate_inflight_requests", model="slow") >= sent,
            what=f"{sent} requests in flight",
        )

        server.signal(sig)
        signalled = time.monotonic()
        # Readiness turns false at once, while the requests are still running.
        until(lambda: status(f"{server.url}/v2/health/ready") in (503, None), what="readiness to drop")
        assert not all(f.done() for f in [*rest, grpc_call]), "the requests finished before the drain"

        for i, future in enumerate(rest):
            response = future.result(timeout=10)
            assert response.status_code == 200, response.text
            assert response.json()["outputs"][0]["data"] == [2 * i, -2 * i]
        np.testing.assert_array_equal(grpc_call.result(timeout=10), [10.0, 12.0])

        assert server.process.wait(timeout=10) == 0
        assert time.monotonic() - signalled < 5.0
        assert refused(server.http_port)
        assert refused(server.grpc_port)
        output = server.output()
        assert "draining in-flight requests" in output, output
        assert "replica stopped" in output, output


def test_a_fractional_drain_timeout_is_honoured() -> None:
    # 0.9 s of drain is enough for a request with 0.6 s of work left.
    with ReplicaProcess(*SLOW, "--drain-timeout", "0.9") as server, ThreadPoolExecutor(max_workers=1) as pool:
        server.wait_ready()
        call = pool.submit(infer_slow, server.url, [1.0], seconds=0.6)
        until(lambda: metric(server.url, "servegate_inflight_requests", model="slow") >= 1, what="a request")
        server.signal(signal.SIGTERM)
        response = call.result(timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == [2.0]
        assert server.process.wait(timeout=10) == 0


def test_sigterm_while_a_model_loads_exits_0() -> None:
    with ReplicaProcess("--model-name", "slowload", "--model-uri", "tests.python_models:SlowLoad") as server:
        server.wait_live()
        server.signal(signal.SIGTERM)
        assert server.process.wait(timeout=10) == 0
        assert "replica stopped" in server.output()


# -- readiness while loading -------------------------------------------------------------------------


def test_ready_only_once_models_have_loaded() -> None:
    with ReplicaProcess("--model-name", "slowload", "--model-uri", "tests.python_models:SlowLoad") as server:
        server.wait_live()
        # The model's load() takes 2 s: the server is live, but neither it nor the model is ready.
        assert status(f"{server.url}/v2/health/live") == 200
        assert status(f"{server.url}/v2/health/ready") == 503
        assert status(f"{server.url}/v2/models/slowload/ready") == 503
        assert index(server.url)["slowload"]["state"] == "LOADING"

        server.wait_ready(timeout=10)
        assert status(f"{server.url}/v2/models/slowload/ready") == 200
        assert index(server.url)["slowload"]["state"] == "READY"


# -- storage -----------------------------------------------------------------------------------------


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "www"
    root.mkdir()
    with serve_files(root) as server:
        yield server


@dataclass
class S3:
    endpoint: str
    bucket: str
    client: Any
    #: what a replica needs in its environment to reach the fake S3.
    env: dict[str, str]


@pytest.fixture
def s3(moto_endpoint: str) -> S3:
    import boto3

    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3(moto_endpoint, bucket, client, env)


def test_storage_failures_leave_the_model_failed_and_the_server_up(
    tmp_path: Path, http_server: FileServer, s3: S3
) -> None:
    make_mlp_onnx(tmp_path / "mlp.onnx", MLP_SIZES)
    missing = tmp_path / "nowhere" / "model.onnx"
    corrupt = tmp_path / "corrupt" / "model.onnx"
    corrupt.parent.mkdir()
    corrupt.write_bytes(os.urandom(512))
    url = f"{http_server.url}/missing.onnx"
    s3_uri = f"s3://{s3.bucket}/nothing/model.onnx"
    reasons = {
        "missing": f"model artifact not found: {missing}",
        "corrupt": str(corrupt),
        "web": f"HTTP 404 fetching {url}",
        "bucket": f"no object at {s3_uri}",
    }
    uris = {
        "missing": missing,
        "corrupt": corrupt,
        "web": url,
        "bucket": s3_uri,
        "mlp": tmp_path / "mlp.onnx",
    }
    args = [arg for name, uri in uris.items() for arg in ("--model-name", name, "--model-uri", str(uri))]
    with ReplicaProcess(
        *args, "--cache-dir", str(tmp_path / "cache"), "--s3-endpoint", s3.endpoint, env=s3.env
    ) as server:
        server.wait_live()

        def loaded() -> dict[str, dict[str, Any]] | None:
            entries = index(server.url)
            return entries if all(entries[n].get("state") not in (None, "LOADING") for n in uris) else None

        entries = until(loaded, what="every model to finish loading")
        for name, reason in reasons.items():
            assert entries[name]["state"] == "FAILED", entries[name]
            assert reason in entries[name]["reason"], entries[name]
            response = infer_mlp(server.url, name)
            assert response.status_code == 503, response.text
            assert reason in response.json()["error"], response.text
            assert status(f"{server.url}/v2/models/{name}/ready") == 503
        assert entries["mlp"]["state"] == "READY"
        assert_mlp(infer_mlp(server.url, "mlp"), seed=0)
        assert status(f"{server.url}/v2/health/live") == 200
        assert status(f"{server.url}/v2/health/ready") == 503
        assert server.process.poll() is None


def test_http_model_is_downloaded_once_and_served_from_the_cache(
    tmp_path: Path, http_server: FileServer
) -> None:
    make_mlp_onnx(http_server.root / "models" / "mlp.onnx", MLP_SIZES, seed=3)
    args = ("--model-name", "web", "--model-uri", f"{http_server.url}/models/mlp.onnx")
    for _ in range(2):  # the second replica finds the model in the cache the first one filled
        with ReplicaProcess(*args, "--cache-dir", str(tmp_path / "cache")) as server:
            server.wait_ready()
            assert_mlp(infer_mlp(server.url, "web"), seed=3)
    assert http_server.gets == ["/models/mlp.onnx"]


def test_s3_object_and_prefix_models(tmp_path: Path, s3: S3) -> None:
    single, folder = tmp_path / "single.onnx", tmp_path / "folder" / "model.onnx"
    make_mlp_onnx(single, MLP_SIZES, seed=4)
    make_mlp_onnx(folder, MLP_SIZES, seed=5)
    s3.client.put_object(Bucket=s3.bucket, Key="single/model.onnx", Body=single.read_bytes())
    s3.client.put_object(Bucket=s3.bucket, Key="folder/model.onnx", Body=folder.read_bytes())
    s3.client.put_object(Bucket=s3.bucket, Key="folder/README.md", Body=b"an MLP")
    with ReplicaProcess(
        "--model-name", "single", "--model-uri", f"s3://{s3.bucket}/single/model.onnx",
        "--model-name", "folder", "--model-uri", f"s3://{s3.bucket}/folder",
        "--cache-dir", str(tmp_path / "cache"), "--s3-endpoint", s3.endpoint,
        env=s3.env,
    ) as server:  # fmt: skip
        server.wait_ready()
        assert_mlp(infer_mlp(server.url, "single"), seed=4)
        assert_mlp(infer_mlp(server.url, "folder"), seed=5)
    assert (tmp_path / "cache" / "s3" / s3.bucket / "folder" / "README.md").read_bytes() == b"an MLP"


# -- reload ------------------------------------------------------------------------------------------


def test_reload_swaps_models_and_keeps_the_old_copy_on_failure(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    artifact = make_mlp_onnx(repo / "mlp" / "1" / "model.onnx", MLP_SIZES, seed=0)
    with ReplicaProcess("--model-repository", str(repo), "--model-control", "explicit") as server:
        server.wait_ready()

        def load() -> httpx.Response:
            return httpx.post(f"{server.url}/v2/repository/models/mlp/load", timeout=30.0)

        assert_mlp(infer_mlp(server.url, "mlp"), seed=0)
        assert not np.allclose(mlp_forward(X, MLP_SIZES, 0), mlp_forward(X, MLP_SIZES, 1))

        make_mlp_onnx(artifact, MLP_SIZES, seed=1)
        assert load().status_code == 200
        assert_mlp(infer_mlp(server.url, "mlp"), seed=1)

        artifact.write_bytes(os.urandom(512))
        response = load()
        assert response.status_code == 503, response.text
        assert str(artifact) in response.json()["error"], response.text
        assert "still serving the loaded copy" in response.json()["error"], response.text
        assert_mlp(infer_mlp(server.url, "mlp"), seed=1)
        assert status(f"{server.url}/v2/models/mlp/ready") == 200
        assert index(server.url)["mlp"]["state"] == "READY"

        make_mlp_onnx(repo / "mlp" / "2" / "model.onnx", MLP_SIZES, seed=2)
        assert load().status_code == 200
        assert_mlp(infer_mlp(server.url, "mlp"), seed=2)
        assert httpx.get(f"{server.url}/v2/models/mlp").json()["versions"] == ["2"]
        assert status(f"{server.url}/v2/models/mlp/versions/2/ready") == 200
        assert index(server.url)["mlp"] == {"name": "mlp", "version": "2", "state": "READY", "reason": ""}
