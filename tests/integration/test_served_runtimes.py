"""Every runtime end to end through the CLI: models made here, served by `servegate model serve`.

Two servers hold every model: `served` (pytorch, sklearn, python, an ONNX MLP, a model repository
and the artifacts that must fail), and `forwarder`, whose triton models forward to `served`.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import skops.io
import torch
from numpy.testing import assert_allclose
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from predictors.examples import make_mlp_onnx, mlp_forward
from tests.servers import ReplicaProcess

# TorchScript is deprecated in torch 2.x but still what many model zoos ship.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings(r"ignore:`torch\.jit:DeprecationWarning")]

MLP_SIZES = (8, 16, 4)
SUPPORTED_FORMATS = "onnx, pytorch, sklearn, python, triton"
SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}],
}
TRITON_CONFIG = """
name: "torch_config"
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "scores" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""
PYTHON_FILE = """
from predictors.python_model import PythonModel
from serving.protocol.types import TensorSpec


class Tripler(PythonModel):
    inputs = (TensorSpec("x", "FP32", (-1,)),)
    outputs = (TensorSpec("y", "FP32", (-1,)),)

    def predict(self, data, context):
        return {"y": data["x"] * 3}
"""


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


# -- models and servers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net() -> Net:
    return Net().eval()


@pytest.fixture(scope="module")
def iris() -> tuple[LogisticRegression, np.ndarray]:
    features, labels = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=1000).fit(features, labels), features


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, net: Net, iris: tuple[LogisticRegression, Any]) -> Path:
    """Every artifact the servers load, made here."""
    root = tmp_path_factory.mktemp("runtimes")
    for folder in ("torch", "sklearn", "trusted", "untrusted", "envtrust", "odd", "repo/torch_config/1"):
        (root / folder).mkdir(parents=True)

    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.randn(3, 4),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, root / "torch" / "model.pt2")
    scripted = torch.jit.script(net)
    torch.jit.save(
        scripted, root / "torch" / "signed.pt", _extra_files={"servegate.json": json.dumps(SIGNATURE)}
    )
    torch.jit.save(scripted, root / "torch" / "plain.pt")
    torch.jit.save(scripted, root / "repo" / "torch_config" / "1" / "model.pt")
    (root / "repo" / "torch_config" / "config.pbtxt").write_text(TRITON_CONFIG)

    clf, _ = iris
    skops.io.dump(clf, root / "sklearn" / "iris.skops")
    for folder in ("trusted", "untrusted", "envtrust"):
        joblib.dump(clf, root / folder / "iris.joblib")

    (root / "tripler.py").write_text(PYTHON_FILE)
    (root / "odd" / "model.xyz").write_bytes(b"not a model")
    make_mlp_onnx(root / "mlp.onnx", MLP_SIZES)
    return root


def wait_settled(server: ReplicaProcess, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """The repository index by name, once no model is still loading (some may have FAILED)."""
    server.wait_live(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        index = httpx.post(f"{server.url}/v2/repository/index", timeout=5.0).json()
        if all(entry.get("state") not in (None, "LOADING") for entry in index):
            return {entry["name"]: entry for entry in index}
        time.sleep(0.1)
    raise TimeoutError(f"models still loading after {timeout}s:\n{server.output()}")


@pytest.fixture(scope="module")
def served(root: Path) -> Iterator[ReplicaProcess]:
    models = {
        "torch_export": root / "torch" / "model.pt2",
        "torch_signed": root / "torch" / "signed.pt",
        "torch_plain": root / "torch" / "plain.pt",
        "iris": root / "sklearn" / "iris.skops",
        "iris_trusted": root / "trusted" / "iris.joblib",
        "iris_untrusted": root / "untrusted" / "iris.joblib",
        "doubler": "tests.python_models:Doubler",
        "tripler": f"{root / 'tripler.py'}:Tripler",
        "picky": "tests.python_models:FailingPredict",
        "mlp": root / "mlp.onnx",
        "odd": root / "odd" / "model.xyz",
    }
    args = [arg for name, uri in models.items() for arg in ("--model-name", name, "--model-uri", str(uri))]
    # Trusted: the joblib folder, and the two that run code as they load (torch.export, a python file).
    trusted = (root / "trusted", root / "torch" / "model.pt2", root / "tripler.py")
    with ReplicaProcess(
        *args, "--model-repository", str(root / "repo"), *(f"--trust-source={path}" for path in trusted)
    ) as server:
        index = wait_settled(server)
        assert index["mlp"]["state"] == "READY", server.output()  # the forwarder's upstream
        yield server


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    # Bound but not listening: connections are refused, and no server started here can take the port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def forwarder(root: Path, served: ReplicaProcess, closed_port: int) -> Iterator[ReplicaProcess]:
    upstream_http = f"http://127.0.0.1:{served.http_port}"
    models = {
        "fwd_grpc": ("triton", f"grpc://{served.grpc_url}/mlp"),
        "fwd_http": ("triton", f"{upstream_http}/mlp"),
        "picky_grpc": ("triton", f"grpc://{served.grpc_url}/picky"),
        "picky_http": ("triton", f"{upstream_http}/picky"),
        "closed_grpc": ("triton", f"grpc://127.0.0.1:{closed_port}/mlp"),
        "closed_http": ("triton", f"http://127.0.0.1:{closed_port}/mlp"),
        "iris_env": ("sklearn", str(root / "envtrust" / "iris.joblib")),
    }
    args = [
        arg
        for name, (fmt, uri) in models.items()
        for arg in ("--model-name", name, "--model-uri", uri, "--model-format", fmt)
    ]
    with ReplicaProcess(*args, env={"SERVEGATE_TRUSTED_SOURCES": str(root / "envtrust")}) as server:
        wait_settled(server)
        yield server


def v2_infer(server: ReplicaProcess, model: str, *tensors: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json={"inputs": list(tensors)}, timeout=30.0)


def v2_outputs(server: ReplicaProcess, model: str, *tensors: dict[str, Any]) -> dict[str, np.ndarray]:
    response = v2_infer(server, model, *tensors)
    assert response.status_code == 200, response.text
    return {out["name"]: np.reshape(out["data"], out["shape"]) for out in response.json()["outputs"]}


def v1_predictions(server: ReplicaProcess, model: str, instances: list[Any]) -> list[Any]:
    response = httpx.post(
        f"{server.url}/v1/models/{model}:predict", json={"instances": instances}, timeout=30.0
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def tensor(name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel().tolist()}


def metadata(server: ReplicaProcess, model: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v2/models/{model}", timeout=5.0)
    assert response.status_code == 200, response.text
    return response.json()


def expected(net: Net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


ROWS = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)


# -- pytorch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "output"), [("torch_export", "output__0"), ("torch_signed", "scores")], ids=["export", "script"]
)
def test_torch_predicts_over_v2_and_v1(served: ReplicaProcess, net: Net, model: str, output: str) -> None:
    assert metadata(served, model)["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata(served, model)["outputs"] == [{"name": output, "datatype": "FP32", "shape": [-1, 3]}]

    outputs = v2_outputs(served, model, tensor("x", ROWS, "FP32"))
    assert list(outputs) == [output]
    assert_allclose(outputs[output], expected(net, ROWS), rtol=1e-5, atol=1e-6)

    predictions = v1_predictions(served, model, ROWS.tolist())
    assert_allclose(np.array(predictions), expected(net, ROWS), rtol=1e-5, atol=1e-6)


def test_torchscript_without_signature_takes_fp32_of_any_shape(served: ReplicaProcess, net: Net) -> None:
    meta = metadata(served, "torch_plain")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": []}]
    assert meta["outputs"] == [{"name": "output__0", "datatype": "FP32", "shape": []}]
    for rows in (ROWS, ROWS[:1]):
        outputs = v2_outputs(served, "torch_plain", tensor("x", rows, "FP32"))
        assert_allclose(outputs["output__0"], expected(net, rows), rtol=1e-5, atol=1e-6)


def test_triton_config_gives_torchscript_its_signature(served: ReplicaProcess, net: Net) -> None:
    meta = metadata(served, "torch_config")
    assert meta["platform"] == "pytorch_libtorch"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]
    outputs = v2_outputs(served, "torch_config", tensor("x", ROWS, "FP32"))
    assert_allclose(outputs["scores"], expected(net, ROWS), rtol=1e-5, atol=1e-6)


# -- sklearn ---------------------------------------------------------------------------------------


def test_skops_serves_without_trust(served: ReplicaProcess, iris: tuple[LogisticRegression, Any]) -> None:
    clf, features = iris
    rows = features[:5]
    assert v1_predictions(served, "iris", rows.tolist()) == clf.predict(rows).tolist()

    outputs = v2_outputs(served, "iris", tensor("input-0", rows, "FP64"))
    assert outputs["predict"].tolist() == clf.predict(rows).tolist()
    assert_allclose(outputs["predict_proba"], clf.predict_proba(rows), rtol=1e-12)


def test_untrusted_joblib_fails_but_the_server_keeps_running(served: ReplicaProcess) -> None:
    assert httpx.get(f"{served.url}/v2/models/iris_untrusted/ready").status_code == 503
    entry = wait_settled(served)["iris_untrusted"]
    assert entry["state"] == "FAILED"
    assert "--trust-source" in entry["reason"]
    response = v2_infer(served, "iris_untrusted", tensor("input-0", np.zeros((1, 4)), "FP64"))
    assert response.status_code == 503
    assert "--trust-source" in response.json()["error"]
    assert httpx.get(f"{served.url}/v2/health/ready").status_code == 503
    assert httpx.get(f"{served.url}/v2/health/live").status_code == 200


@pytest.mark.parametrize(("server", "model"), [("served", "iris_trusted"), ("forwarder", "iris_env")])
def test_trusted_joblib_serves(
    request: pytest.FixtureRequest, iris: tuple[LogisticRegression, Any], server: str, model: str
) -> None:
    replica: ReplicaProcess = request.getfixturevalue(server)
    clf, features = iris
    assert httpx.get(f"{replica.url}/v2/models/{model}/ready").status_code == 200
    assert v1_predictions(replica, model, features[:5].tolist()) == clf.predict(features[:5]).tolist()


# -- python ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "factor"), [("doubler", 2), ("tripler", 3)])
def test_python_models_by_import_path_and_file(served: ReplicaProcess, model: str, factor: int) -> None:
    assert metadata(served, model)["platform"] == "python"
    assert v1_predictions(served, model, [1.0, 2.5, -3.0]) == [factor * 1.0, factor * 2.5, factor * -3.0]
    x = np.array([1.0, 2.5, -3.0], dtype=np.float32)
    assert v2_outputs(served, model, tensor("x", x, "FP32"))["y"].tolist() == (x * factor).tolist()


# -- unknown artifacts -------------------------------------------------------------------------------


def test_unknown_suffix_fails_naming_the_supported_formats(served: ReplicaProcess) -> None:
    entry = wait_settled(served)["odd"]
    assert entry["state"] == "FAILED"
    assert "--model-format" in entry["reason"]
    assert SUPPORTED_FORMATS in entry["reason"]
    assert httpx.get(f"{served.url}/v2/health/live").status_code == 200


# -- triton ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["fwd_grpc", "fwd_http"])
def test_triton_forwards_to_the_upstream(forwarder: ReplicaProcess, model: str) -> None:
    x = np.random.default_rng(1).normal(size=(3, MLP_SIZES[0])).astype(np.float32)
    outputs = v2_outputs(forwarder, model, tensor("input", x, "FP32"))
    assert_allclose(outputs["output"], mlp_forward(x, MLP_SIZES), rtol=1e-5, atol=1e-6)
    assert_allclose(
        np.array(v1_predictions(forwarder, model, x.tolist())),
        mlp_forward(x, MLP_SIZES),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("model", ["fwd_grpc", "fwd_http"])
def test_triton_metadata_is_the_upstreams(
    served: ReplicaProcess, forwarder: ReplicaProcess, model: str
) -> None:
    upstream, forwarded = metadata(served, "mlp"), metadata(forwarder, model)
    assert forwarded["name"] == model
    assert forwarded["platform"] == "triton"
    assert (
        forwarded["inputs"] == upstream["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]
    )
    assert forwarded["outputs"] == upstream["outputs"]


@pytest.mark.parametrize("model", ["picky_grpc", "picky_http"])
def test_triton_passes_on_the_upstreams_invalid_input(forwarder: ReplicaProcess, model: str) -> None:
    body = {
        "inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [-1]}],
        "parameters": {"invalid": True},
    }
    response = httpx.post(f"{forwarder.url}/v2/models/{model}/infer", json=body, timeout=30.0)
    assert response.status_code == 400, response.text
    assert "x must be positive" in response.json()["error"]


@pytest.mark.parametrize("model", ["closed_grpc", "closed_http"])
def test_triton_at_a_closed_port_fails_the_model(
    forwarder: ReplicaProcess, closed_port: int, model: str
) -> None:
    assert httpx.get(f"{forwarder.url}/v2/models/{model}/ready").status_code == 503
    entry = wait_settled(forwarder)[model]
    assert entry["state"] == "FAILED"
    assert "cannot reach" in entry["reason"]
    assert f"127.0.0.1:{closed_port}" in entry["reason"]
    assert httpx.get(f"{forwarder.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{forwarder.url}/v2/health/ready").status_code == 503
