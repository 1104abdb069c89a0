"""Triton's own Python clients, unchanged, against a real replica.

Every V2 datatype makes the round trip through `tritonclient.http`, `tritonclient.http.aio`,
`tritonclient.grpc` and `tritonclient.grpc.aio`, with binary and JSON tensors, and is compared with
what ONNX Runtime answers when it runs the same model file directly. Health, metadata, request ids,
parameters and the repository extension (load/unload) go through the same clients.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from google.protobuf import json_format
from onnx import TensorProto
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from predictors.examples import mlp_forward
from tests.conftest import IDENTITY_TYPES, MLP_SIZES
from tests.servers import ReplicaProcess

pytestmark = pytest.mark.integration

#: the models of the session repository (see conftest.py).
REPOSITORY_MODELS = ("identity", "identity_bf16", "mlp", "mlp_batched")
#: the V2 datatypes and the identity model that echoes each.
DATATYPE_MODELS = {**{dt: "identity" for dt in IDENTITY_TYPES}, "BF16": "identity_bf16"}
MLP_METADATA = {
    "name": "mlp",
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
}


# -- the four clients, behind one awaitable interface ------------------------------------------------


@dataclass(frozen=True)
class Flavour:
    """One of tritonclient's clients: where it connects and which InferInput classes it takes."""

    name: str
    module: ModuleType  # the package whose InferInput / InferRequestedOutput the client takes
    client_class: Callable[[str], Any]
    is_async: bool

    @property
    def grpc(self) -> bool:
        return self.module is grpcclient

    @property
    def not_found(self) -> str:
        """`InferenceServerException.status()` for an unknown model."""
        return "StatusCode.NOT_FOUND" if self.grpc else "404"

    def address(self, server: ReplicaProcess) -> str:
        return server.grpc_url if self.grpc else server.url.removeprefix("http://")


FLAVOURS = [
    Flavour("http", httpclient, httpclient.InferenceServerClient, is_async=False),
    Flavour("http_aio", httpclient, httpaio.InferenceServerClient, is_async=True),
    Flavour("grpc", grpcclient, grpcclient.InferenceServerClient, is_async=False),
    Flavour("grpc_aio", grpcclient, grpcaio.InferenceServerClient, is_async=True),
]
each_flavour = pytest.mark.parametrize("flavour", FLAVOURS, ids=lambda f: f.name)


class _SyncAsAsync:
    """A sync client with the aio clients' interface: every method becomes a coroutine."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


@contextlib.asynccontextmanager
async def connect(flavour: Flavour, server: ReplicaProcess) -> AsyncIterator[Any]:
    client = flavour.client_class(flavour.address(server))
    if not flavour.is_async:
        client = _SyncAsAsync(client)
    try:
        yield client
    finally:
        await client.close()


def make_input(flavour: Flavour, name: str, array: np.ndarray, binary: bool = True) -> Any:
    tensor = flavour.module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    if flavour.grpc:
        tensor.set_data_from_numpy(array)  # gRPC always sends raw_input_contents
    else:
        tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def request_outputs(flavour: Flavour, names: list[str], binary: bool) -> list[Any]:
    if flavour.grpc:
        return [grpcclient.InferRequestedOutput(name) for name in names]
    return [httpclient.InferRequestedOutput(name, binary_data=binary) for name in names]


def response_doc(flavour: Flavour, result: Any) -> dict[str, Any]:
    """The inference response as JSON (gRPC results hold a protobuf message)."""
    return result.get_response(as_json=True) if flavour.grpc else result.get_response()


def plain(answer: Any) -> Any:
    """A metadata or index answer as REST JSON; gRPC answers are messages whose int64 shapes are strings."""
    if not hasattr(answer, "DESCRIPTOR"):
        return answer
    doc = json_format.MessageToDict(answer, preserving_proto_field_name=True)
    for tensor in doc.get("inputs", []) + doc.get("outputs", []):
        tensor["shape"] = [int(d) for d in tensor["shape"]]
    return doc


def index_states(answer: Any) -> dict[str, str | None]:
    """`get_model_repository_index()` as {name: state}; REST answers a list, gRPC {"models": [...]}."""
    doc = plain(answer)
    entries = doc if isinstance(doc, list) else doc.get("models", [])
    return {entry["name"]: entry.get("state") for entry in entries}


# -- ONNX Runtime, run directly on the repository's files -------------------------------------------


@functools.cache
def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of the model at `path`, computed by ONNX Runtime itself."""
    session = _session(path)
    names = [out.name for out in session.get_outputs()]
    if any(array.dtype == ml_dtypes.bfloat16 for array in inputs.values()):
        # session.run() can neither take nor return bfloat16; OrtValues can (but cannot hold strings).
        feeds = {name: _ort_value(array) for name, array in inputs.items()}
        values = session.run_with_ort_values(names, feeds)
        return {name: _from_ort_value(value) for name, value in zip(names, values, strict=True)}
    feeds = {name: _to_ort_strings(a) if a.dtype == object else a for name, a in inputs.items()}
    results = session.run(names, feeds)
    return {
        name: _from_ort_strings(r) if r.dtype == object else r for name, r in zip(names, results, strict=True)
    }


# ORT's Python binding takes and returns string tensors as `str` and gives them to the model UTF-8
# encoded, so only UTF-8 text goes through ONNX models (other bytes: see test_non_utf8_bytes_*).
def _to_ort_strings(array: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda b: b.decode(), otypes=[object])(array)


def _from_ort_strings(array: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda s: s.encode(), otypes=[object])(array)


def _ort_value(array: np.ndarray) -> ort.OrtValue:
    if array.dtype == ml_dtypes.bfloat16:
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(array)


def _from_ort_value(value: ort.OrtValue) -> np.ndarray:
    if value.element_type() != TensorProto.BFLOAT16:
        return value.numpy()
    raw = (ctypes.c_uint8 * value.tensor_size_in_bytes()).from_address(value.data_ptr())
    return np.frombuffer(bytes(raw), dtype=ml_dtypes.bfloat16).reshape(value.shape())


# -- test data ----------------------------------------------------------------------------------------


def sample(datatype: str, json_safe: bool) -> np.ndarray:
    """A (2, 3) tensor of `datatype` holding the values most likely to be mangled on the way.

    JSON can carry neither NaN nor infinities: `json_safe` leaves them out.
    """
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        rows = [[b"", "é ✓ 日本".encode(), b"a\x00b"], [b"plain", "Ω".encode(), b"x" * 300]]
        return np.array(rows, dtype=object)
    dtype = np.dtype(triton_to_np_dtype(datatype))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, info.max - 1, -1 if info.min else 2]], dtype=dtype)
    finfo = ml_dtypes.finfo(dtype)
    extremes = [-0.0, float(finfo.max), float(finfo.smallest_subnormal)]
    rest = [-1 / 3, float(finfo.min), float(finfo.tiny)] if json_safe else [np.nan, np.inf, -np.inf]
    return np.array([extremes, rest]).astype(dtype)


def identity_inputs(datatype: str, json_safe: bool) -> dict[str, np.ndarray]:
    """A sample for every input of the identity model that echoes `datatype`."""
    types = IDENTITY_TYPES if DATATYPE_MODELS[datatype] == "identity" else ("BF16", "FP32")
    return {f"in_{dt}": sample(dt, json_safe) for dt in types}


def as_received(expected: np.ndarray, json_outputs: bool) -> np.ndarray:
    """tritonclient hands BYTES outputs that came as JSON back as `str`."""
    if json_outputs and expected.dtype == object:
        return np.vectorize(lambda b: b.decode(), otypes=[object])(expected)
    return expected


def assert_identical(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype, f"dtype {got.dtype}, expected {expected.dtype}"
    assert got.shape == expected.shape, f"shape {got.shape}, expected {expected.shape}"
    if expected.dtype == object:
        assert got.tolist() == expected.tolist()
    else:
        # Bits, not values: -0.0 must stay negative and NaN must stay NaN.
        assert got.tobytes() == expected.tobytes(), f"{got!r}\n!= expected\n{expected!r}"


def mlp_batch(rows: int = 5) -> np.ndarray:
    return np.random.default_rng(7).normal(size=(rows, MLP_SIZES[0])).astype(np.float32)


def assert_mlp_output(got: np.ndarray, x: np.ndarray, model_repo: Path) -> None:
    np.testing.assert_allclose(got, mlp_forward(x, MLP_SIZES, seed=0), rtol=1e-5, atol=1e-5)
    direct = run_onnx(model_repo / "mlp" / "1" / "model.onnx", {"input": x})["output"]
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-6)


# -- every datatype, every client, binary and JSON ------------------------------------------------------


def _round_trip_cases() -> list[Any]:
    """(flavour, input encoding, output encoding, datatype); "all" requests no outputs at all."""
    cases = []
    for flavour in FLAVOURS:
        # gRPC has no JSON: inputs go as raw_input_contents, outputs come back raw.
        input_modes = ("binary",) if flavour.grpc else ("binary", "json")
        output_modes = ("binary", "all") if flavour.grpc else ("binary", "json", "all")
        for inputs, outputs, datatype in itertools.product(input_modes, output_modes, DATATYPE_MODELS):
            if datatype == "BF16" and inputs == "json":
                continue  # tritonclient refuses BF16 inputs as JSON ("must be sent as binary data")
            case_id = f"{datatype}-{flavour.name}-{inputs}_in-{outputs}_out"
            cases.append(pytest.param(flavour, inputs, outputs, datatype, id=case_id))
    return cases


@pytest.mark.parametrize(("flavour", "inputs", "outputs", "datatype"), _round_trip_cases())
async def test_identity_round_trip(
    flavour: Flavour, inputs: str, outputs: str, datatype: str, replica: ReplicaProcess, model_repo: Path
) -> None:
    model = DATATYPE_MODELS[datatype]
    arrays = identity_inputs(datatype, json_safe="json" in (inputs, outputs))
    expected = run_onnx(model_repo / model / "model.onnx", arrays)
    wanted = f"out_{datatype}"
    tensors = [make_input(flavour, name, a, binary=inputs == "binary") for name, a in arrays.items()]
    requested = None if outputs == "all" else request_outputs(flavour, [wanted], binary=outputs == "binary")

    async with connect(flavour, replica) as client:
        result = await client.infer(model, tensors, outputs=requested)

    names = [out["name"] for out in response_doc(flavour, result)["outputs"]]
    assert names == (list(expected) if outputs == "all" else [wanted])
    assert_identical(result.as_numpy(wanted), as_received(expected[wanted], json_outputs=outputs == "json"))


NOT_UTF8 = np.array([[b"\xff\xfe\x80", b"ok"]], dtype=object)


@each_flavour
async def test_non_utf8_bytes_pass_through_a_python_model(flavour: Flavour, replica: ReplicaProcess) -> None:
    async with connect(flavour, replica) as client:
        result = await client.infer("echo", [make_input(flavour, "blob", NOT_UTF8)])
    assert_identical(result.as_numpy("blob"), NOT_UTF8)


@each_flavour
async def test_non_utf8_bytes_are_refused_by_onnx_strings(flavour: Flavour, replica: ReplicaProcess) -> None:
    arrays = identity_inputs("BYTES", json_safe=False)
    arrays["in_BYTES"] = np.repeat(NOT_UTF8[:, :1], 3, axis=1).repeat(2, axis=0)
    tensors = [make_input(flavour, name, a) for name, a in arrays.items()]
    async with connect(flavour, replica) as client:
        with pytest.raises(InferenceServerException) as error:
            await client.infer("identity", tensors)
    assert error.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    assert "in_BYTES" in error.value.message() and "UTF-8" in error.value.message()


# -- the MLP against its numpy reference -----------------------------------------------------------------


@each_flavour
async def test_mlp_matches_reference(flavour: Flavour, replica: ReplicaProcess, model_repo: Path) -> None:
    x = mlp_batch()
    async with connect(flavour, replica) as client:
        result = await client.infer("mlp", [make_input(flavour, "input", x)])
    assert result.as_numpy("output").shape == (5, MLP_SIZES[-1])
    assert_mlp_output(result.as_numpy("output"), x, model_repo)


@each_flavour
async def test_request_id_parameters_and_timeout(
    flavour: Flavour, replica: ReplicaProcess, model_repo: Path
) -> None:
    x = mlp_batch(3)
    async with connect(flavour, replica) as client:
        result = await client.infer(
            "mlp",
            [make_input(flavour, "input", x)],
            request_id="abc",
            parameters={"k": "v"},
            timeout=30_000_000,  # microseconds: far more than the model needs
        )
    assert response_doc(flavour, result)["id"] == "abc"
    assert_mlp_output(result.as_numpy("output"), x, model_repo)


# -- health and metadata ----------------------------------------------------------------------------------


@each_flavour
async def test_health_and_metadata(flavour: Flavour, replica: ReplicaProcess) -> None:
    async with connect(flavour, replica) as client:
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert all([await client.is_model_ready(name) for name in REPOSITORY_MODELS])
        server = plain(await client.get_server_metadata())
        model = plain(await client.get_model_metadata("mlp"))
        identity = plain(await client.get_model_metadata("identity"))

    assert server["name"] == "servegate"
    assert server["version"]
    assert {"binary_tensor_data", "model_repository"} <= set(server["extensions"])
    assert model == MLP_METADATA
    assert {t["name"]: t["datatype"] for t in identity["inputs"]} == {f"in_{dt}": dt for dt in IDENTITY_TYPES}
    assert {t["name"]: t["datatype"] for t in identity["outputs"]} == {
        f"out_{dt}": dt for dt in IDENTITY_TYPES
    }
    assert all(t["shape"] == [-1, -1] for t in identity["inputs"] + identity["outputs"])


@each_flavour
async def test_unknown_model_is_not_found(flavour: Flavour, replica: ReplicaProcess) -> None:
    async with connect(flavour, replica) as client:
        with pytest.raises(InferenceServerException) as metadata:
            await client.get_model_metadata("no_such_model")
        with pytest.raises(InferenceServerException) as infer:
            await client.infer("no_such_model", [make_input(flavour, "input", mlp_batch())])
    for error in (metadata.value, infer.value):
        assert error.status() == flavour.not_found
        assert "no_such_model" in error.message()


async def test_http_model_ready_is_false_for_an_unknown_model(replica: ReplicaProcess) -> None:
    async with connect(FLAVOURS[0], replica) as client:
        assert not await client.is_model_ready("no_such_model")


# -- the repository extension, on a replica of our own ---------------------------------------------------


@pytest.fixture(scope="module")
def own_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session repository that these tests may change."""
    root = tmp_path_factory.mktemp("own") / "models"
    shutil.copytree(model_repo, root)
    return root


@pytest.fixture(scope="module")
def own_replica(own_repo: Path) -> Iterator[ReplicaProcess]:
    """A replica that models are unloaded from and added to, so the shared one stays untouched; its
    repository load/unload API is on (off by default, as Triton's explicit model control)."""
    with ReplicaProcess("--model-repository", str(own_repo), "--model-control", "explicit") as server:
        server.wait_ready()
        yield server


@each_flavour
async def test_repository_index(flavour: Flavour, own_replica: ReplicaProcess) -> None:
    async with connect(flavour, own_replica) as client:
        states = index_states(await client.get_model_repository_index())
    assert {name: states.get(name) for name in REPOSITORY_MODELS} == dict.fromkeys(REPOSITORY_MODELS, "READY")


@each_flavour
async def test_unload_then_load(flavour: Flavour, own_replica: ReplicaProcess, model_repo: Path) -> None:
    x = mlp_batch()
    async with connect(flavour, own_replica) as client:
        await client.unload_model("mlp")
        try:
            assert not await client.is_model_ready("mlp")
            assert index_states(await client.get_model_repository_index())["mlp"] == "UNAVAILABLE"
            with pytest.raises(InferenceServerException) as unloaded:
                await client.infer("mlp", [make_input(flavour, "input", x)])
        finally:
            await client.load_model("mlp")
        assert await client.is_model_ready("mlp")
        result = await client.infer("mlp", [make_input(flavour, "input", x)])

    assert unloaded.value.status() == flavour.not_found
    assert "'mlp' is not loaded" in unloaded.value.message()
    assert_mlp_output(result.as_numpy("output"), x, model_repo)


@each_flavour
async def test_load_picks_up_a_new_model_folder(
    flavour: Flavour, own_replica: ReplicaProcess, own_repo: Path, model_repo: Path
) -> None:
    name = f"mlp_copy_{flavour.name}"
    shutil.copytree(own_repo / "mlp", own_repo / name)
    x = mlp_batch()
    async with connect(flavour, own_replica) as client:
        await client.load_model(name)
        assert await client.is_model_ready(name)
        metadata = plain(await client.get_model_metadata(name))
        states = index_states(await client.get_model_repository_index())
        result = await client.infer(name, [make_input(flavour, "input", x)])

    assert metadata == {**MLP_METADATA, "name": name}
    assert states[name] == "READY"
    assert_mlp_output(result.as_numpy("output"), x, model_repo)
