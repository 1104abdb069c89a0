"""Bad requests against a real replica: the right status and a message naming the problem, on every
protocol, and the server keeps serving afterwards.

The replica (tests/conftest.py) runs with `--max-body-size 1MiB` and serves mlp ("input" FP32 [-1, 8]
-> "output" FP32 [-1, 4]), identity (in_<DT> -> out_<DT> for every datatype but BF16) and doubler
(x FP32 [-1] -> y). gRPC requests go through the raw generated stub, so that messages tritonclient
would refuse to build can be sent.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from predictors.examples import mlp_forward
from serving.errors import ERROR_TABLE
from tests.conftest import MLP_SIZES
from tests.servers import ReplicaProcess

pytestmark = pytest.mark.integration

LIMIT = 1 << 20  # the replica's --max-body-size
ROW = [float(i) for i in range(8)]
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


# -- request builders -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rest:
    path: str
    body: bytes | None = None
    method: str = "POST"
    headers: dict[str, Any] = field(default_factory=dict)
    chunked: bool = False


def v2(doc: object, model: str = "mlp", **headers: Any) -> Rest:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return Rest(f"/v2/models/{model}/infer", body, headers=headers)


def v1(doc: object, model: str = "mlp") -> Rest:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return Rest(f"/v1/models/{model}:predict", body)


def mlp_input(shape: list[int] | None = None, data: Any = None, datatype: str = "FP32", **extra: Any) -> dict:
    return {
        "name": extra.pop("name", "input"),
        "datatype": datatype,
        "shape": [1, 8] if shape is None else shape,
        "data": ROW if data is None else data,
        **extra,
    }


def binary(doc: dict, *blobs: bytes, header_length: int | None = None, model: str = "mlp") -> Rest:
    """A V2 binary-extension request; `header_length` overrides the true JSON header length."""
    header = orjson.dumps(doc)
    length = len(header) if header_length is None else header_length
    return v2(header + b"".join(blobs), model, **{"Inference-Header-Content-Length": str(length)})


def binary_input(name: str, datatype: str, shape: list[int], size: int) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def fp32(*values: float) -> bytes:
    return np.asarray(values, dtype=np.float32).tobytes()


def grpc_infer(
    *inputs: pb.ModelInferRequest.InferInputTensor,
    raw: list[bytes] | None = None,
    model: str = "mlp",
    version: str = "",
    outputs: tuple[str, ...] = (),
) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model,
        model_version=version,
        inputs=list(inputs),
        raw_input_contents=raw or [],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs],
    )


def grpc_input(
    name: str = "input", datatype: str = "FP32", shape: tuple[int, ...] = (1, 8), **contents: Any
) -> pb.ModelInferRequest.InferInputTensor:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape))
    if contents:
        tensor.contents.CopyFrom(pb.InferTensorContents(**contents))
    return tensor


GOOD_GRPC_INPUT = grpc_input(fp32_contents=ROW)
OVERSIZED = b" " * (LIMIT + 1)
GOOD_JSON = orjson.dumps({"inputs": [mlp_input()]})


def _chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# -- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    status: int
    #: a substring the error message must contain (REST `{"error": ...}` and gRPC details).
    fragment: str
    rest: Rest | None
    #: a message for the stub, or raw bytes sent as the serialized request; None: REST only.
    grpc: pb.ModelInferRequest | bytes | None = None
    grpc_code: grpc.StatusCode | None = None
    grpc_fragment: str | None = None


INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
TOO_LARGE = grpc.StatusCode.RESOURCE_EXHAUSTED
IDENTITY_BYTES = "in_BYTES"

CASES = [
    # Body syntax.
    Case("malformed-json", 400, "malformed JSON", v2(b'{"inputs": [')),
    Case("malformed-protobuf", 400, "ModelInferRequest", None, grpc=b"\xff\xff\xff\xff", grpc_code=INVALID),
    Case("body-not-an-object", 400, "JSON object", v2(b"[1, 2, 3]")),
    Case("empty-body", 400, "malformed JSON", v2(b"")),
    Case("no-inputs", 400, "inputs", v2({"inputs": []}), grpc_infer(), INVALID, "input"),
    Case(
        "input-without-name", 400, "name", v2({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]})
    ),
    Case("negative-dim", 400, "shape", v2({"inputs": [mlp_input([-1, 8])]})),
    # Shape and datatype against the model's signature.
    Case(
        "wrong-rank",
        400,
        "shape [8]",
        v2({"inputs": [mlp_input([8])]}),
        grpc_infer(grpc_input(shape=(8,), fp32_contents=ROW)),
        INVALID,
    ),
    Case(
        "wrong-dim",
        400,
        "shape [1, 7]",
        v2({"inputs": [mlp_input([1, 7], ROW[:7])]}),
        grpc_infer(grpc_input(shape=(1, 7), fp32_contents=ROW[:7])),
        INVALID,
    ),
    Case(
        "wrong-datatype",
        400,
        "datatype FP64",
        v2({"inputs": [mlp_input(datatype="FP64")]}),
        grpc_infer(grpc_input(datatype="FP64", fp64_contents=ROW)),
        INVALID,
    ),
    Case(
        "unknown-datatype",
        400,
        "unsupported datatype 'FP8'",
        v2({"inputs": [mlp_input(datatype="FP8")]}),
        grpc_infer(grpc_input(datatype="FP8"), raw=[fp32(*ROW)]),
        INVALID,
    ),
    Case(
        "fp16-in-typed-contents",
        400,
        "raw_input_contents",
        None,
        grpc_infer(grpc_input(datatype="FP16", fp32_contents=ROW)),
        INVALID,
    ),
    Case(
        "mixed-raw-and-typed-contents",
        400,
        "typed contents",
        None,
        grpc_infer(grpc_input(fp32_contents=ROW), grpc_input("other"), raw=[fp32(*ROW), fp32(*ROW)]),
        INVALID,
    ),
    Case("null-in-fp32-data", 400, "input 'input'", v2({"inputs": [mlp_input(data=[None] * 8)]})),
    # Data that does not match the shape.
    Case(
        "data-length-mismatch",
        400,
        "needs 8",
        v2({"inputs": [mlp_input(data=ROW[:7])]}),
        grpc_infer(grpc_input(fp32_contents=ROW[:7])),
        INVALID,
    ),
    Case(
        "raw-length-mismatch",
        400,
        "needs 32",
        binary({"inputs": [binary_input("input", "FP32", [1, 8], 28)]}, fp32(*ROW[:7])),
        grpc_infer(grpc_input(), raw=[fp32(*ROW[:7])]),
        INVALID,
    ),
    Case(
        "shape-product-overflows-int64",
        400,
        "input 'input'",
        v2({"inputs": [mlp_input([2**62, 4], [])]}),
        grpc_infer(grpc_input(shape=(2**62, 4))),
        INVALID,
    ),
    Case("dim-past-int64", 400, "input 'input'", v2({"inputs": [mlp_input([0, 2**64 - 1], [])]})),
    Case(
        "bytes-data-not-a-list",
        400,
        "must be a list",
        v2(
            {"inputs": [{"name": IDENTITY_BYTES, "datatype": "BYTES", "shape": [1, 1], "data": "abc"}]},
            "identity",
        ),
    ),
    Case(
        "bytes-shape-too-large",
        400,
        IDENTITY_BYTES,
        binary({"inputs": [binary_input(IDENTITY_BYTES, "BYTES", [1, 2**62], 0)]}, model="identity"),
        grpc_infer(grpc_input(IDENTITY_BYTES, "BYTES", (1, 2**62)), raw=[b""], model="identity"),
        INVALID,
    ),
    Case(
        "bytes-length-prefix-past-the-end",
        400,
        "claims 100 bytes",
        binary(
            {"inputs": [binary_input(IDENTITY_BYTES, "BYTES", [1, 1], 6)]},
            b"\x64\x00\x00\x00ab",
            model="identity",
        ),
        grpc_infer(
            grpc_input(IDENTITY_BYTES, "BYTES", (1, 1)), raw=[b"\x64\x00\x00\x00ab"], model="identity"
        ),
        INVALID,
    ),
    # Binary headers that lie about sizes.
    Case(
        "header-length-past-the-body",
        400,
        "Inference-Header-Content-Length",
        binary({"inputs": [mlp_input()]}, header_length=100_000),
    ),
    Case(
        "header-length-cuts-the-json",
        400,
        "malformed JSON",
        binary({"inputs": [mlp_input()]}, header_length=10),
    ),
    Case(
        "binary-data-size-past-the-end",
        400,
        "binary_data_size 32",
        binary({"inputs": [binary_input("input", "FP32", [1, 8], 32)]}, fp32(*ROW[:4])),
    ),
    Case(
        "trailing-binary-bytes",
        400,
        "binary data",
        binary({"inputs": [binary_input("input", "FP32", [1, 8], 32)]}, fp32(*ROW), b"trailing"),
    ),
    Case(
        "data-and-binary-data-size",
        400,
        "both 'data' and binary_data_size",
        binary({"inputs": [mlp_input(parameters={"binary_data_size": 32})]}, fp32(*ROW)),
    ),
    Case(
        "raw-entries-do-not-match-inputs",
        400,
        "raw_input_contents",
        None,
        grpc_infer(grpc_input(), raw=[fp32(*ROW), fp32(*ROW)]),
        INVALID,
    ),
    Case(
        "non-numeric-header-length",
        400,
        "Inference-Header-Content-Length",
        v2(GOOD_JSON, **{"Inference-Header-Content-Length": "twelve"}),
    ),
    Case(
        "negative-header-length",
        400,
        "Inference-Header-Content-Length",
        v2(GOOD_JSON, **{"Inference-Header-Content-Length": "-5"}),
    ),
    Case(
        # "²" (latin-1 0xB2) is a digit to str.isdigit() but not to int().
        "superscript-digit-header-length",
        400,
        "Inference-Header-Content-Length",
        v2(GOOD_JSON, **{"Inference-Header-Content-Length": b"\xb2"}),
    ),
    # Models, versions, inputs and outputs that do not exist.
    Case(
        "unknown-model",
        404,
        "model 'nope' not found",
        v2({"inputs": [mlp_input()]}, "nope"),
        grpc_infer(GOOD_GRPC_INPUT, model="nope"),
        NOT_FOUND,
    ),
    Case(
        "unknown-version",
        404,
        "version '7'",
        Rest("/v2/models/mlp/versions/7/infer", GOOD_JSON),
        grpc_infer(GOOD_GRPC_INPUT, version="7"),
        NOT_FOUND,
    ),
    Case(
        "unknown-output",
        400,
        "unknown output 'nope'",
        v2({"inputs": [mlp_input()], "outputs": [{"name": "nope"}]}),
        grpc_infer(GOOD_GRPC_INPUT, outputs=("nope",)),
        INVALID,
    ),
    Case(
        "missing-input",
        400,
        "'in_FP64'",
        v2({"inputs": [mlp_input(name="in_FP32")]}, "identity"),
        grpc_infer(grpc_input("in_FP32", fp32_contents=ROW), model="identity"),
        INVALID,
    ),
    Case(
        "unknown-input",
        400,
        "unknown input 'inputs'",
        v2({"inputs": [mlp_input(name="inputs")]}),
        grpc_infer(grpc_input("inputs", fp32_contents=ROW)),
        INVALID,
    ),
    Case(
        "input-given-twice",
        400,
        "given twice",
        v2({"inputs": [mlp_input(), mlp_input()]}),
        grpc_infer(GOOD_GRPC_INPUT, GOOD_GRPC_INPUT),
        INVALID,
    ),
    # Size limits.
    Case(
        "oversized-body",
        413,
        "--max-body-size",
        v2(OVERSIZED),
        grpc_infer(grpc_input(shape=(1, LIMIT // 4 + 8)), raw=[b"\x00" * (LIMIT + 32)]),
        TOO_LARGE,
        "larger than max",
    ),
    Case(
        "oversized-chunked-body",
        413,
        "--max-body-size",
        Rest("/v2/models/mlp/infer", OVERSIZED, chunked=True),
    ),
    Case(
        "oversized-after-gzip",
        413,
        "--max-body-size",
        v2(gzip.compress(OVERSIZED), **{"Content-Encoding": "gzip"}),
    ),
    Case("v1-oversized-body", 413, "--max-body-size", v1(OVERSIZED)),
    # Content-Encoding.
    Case("gzip-garbage", 400, "gzip", v2(b"this is not gzip", **{"Content-Encoding": "gzip"})),
    Case(
        "gzip-truncated",
        400,
        "gzip",
        v2(gzip.compress(GOOD_JSON)[:-6], **{"Content-Encoding": "gzip"}),
    ),
    Case("deflate-garbage", 400, "deflate", v2(b"this is not zlib", **{"Content-Encoding": "deflate"})),
    Case("unsupported-encoding", 400, "Content-Encoding 'br'", v2(GOOD_JSON, **{"Content-Encoding": "br"})),
    # V1.
    Case("v1-malformed-json", 400, "malformed JSON", v1(b"{instances")),
    Case("v1-without-instances", 400, "'instances'", v1({"signature_name": "x"})),
    Case("v1-empty-instances", 400, "'instances'", v1({"instances": []})),
    Case("v1-ragged-instances", 400, "ragged", v1({"instances": [ROW, ROW[:7]]})),
    Case("v1-wrong-width", 400, "shape [1, 3]", v1({"instances": [[1.0, 2.0, 3.0]]})),
    Case("v1-text-for-fp32", 400, "FP32", v1({"instances": [["a"] * 8]})),
    Case("v1-plain-rows-several-inputs", 400, "several inputs", v1({"instances": [[1]]}, "identity")),
    Case("v1-unknown-model", 404, "model 'nope' not found", v1({"instances": [ROW]}, "nope")),
    # Routing.
    Case("unknown-route", 404, "/v2/nope", Rest("/v2/nope", method="GET")),
    Case("unknown-model-metadata", 404, "model 'nope' not found", Rest("/v2/models/nope", method="GET")),
    Case("wrong-method", 405, "GET /v2/models/mlp/infer", Rest("/v2/models/mlp/infer", method="GET")),
    Case("v1-wrong-method", 405, "Method Not Allowed", Rest("/v1/models/mlp:predict", method="PUT")),
]

REST_CASES = [pytest.param(case, id=case.id) for case in CASES if case.rest is not None]
GRPC_CASES = [pytest.param(case, id=case.id) for case in CASES if case.grpc is not None]


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(replica: ReplicaProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=replica.url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def channel(replica: ReplicaProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(replica.grpc_url) as chan:
        yield chan


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def send(http: httpx.Client, rest: Rest) -> httpx.Response:
    content: Any = _chunks(rest.body) if rest.chunked and rest.body else rest.body
    return http.request(rest.method, rest.path, content=content, headers=rest.headers)


def assert_json_error(response: httpx.Response, status: int, fragment: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str) and message.strip()
    assert fragment in message
    return message


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", REST_CASES)
def test_rest_error(http: httpx.Client, case: Case) -> None:
    assert case.rest is not None
    assert_json_error(send(http, case.rest), case.status, case.fragment)


@pytest.mark.parametrize("case", GRPC_CASES)
def test_grpc_error(
    channel: grpc.Channel, stub: service_pb2_grpc.GRPCInferenceServiceStub, case: Case
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        if isinstance(case.grpc, bytes):
            # No serializers: the bytes go on the wire as the request message.
            channel.unary_unary(MODEL_INFER)(case.grpc, timeout=30)
        else:
            stub.ModelInfer(case.grpc, timeout=30)
    error = info.value
    assert error.code() == case.grpc_code, error.details()
    details = error.details()
    assert details and details.strip()
    assert (case.grpc_fragment or case.fragment) in details


def test_rest_and_grpc_agree_on_shared_cases() -> None:
    # Every case with both a REST and a gRPC form expects the pair the error table holds.
    pairs = set(ERROR_TABLE.values())
    for case in CASES:
        if case.rest is not None and case.grpc is not None:
            assert (case.status, case.grpc_code) in pairs, case.id


# -- compression that works -----------------------------------------------------------------------


def _mlp_output(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert (output["name"], output["shape"]) == ("output", [1, 4])
    return np.asarray(output["data"], dtype=np.float32).reshape(1, 4)


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
    ids=["gzip", "deflate"],
)
def test_compressed_request_body(http: httpx.Client, encoding: str, compress: Any) -> None:
    response = http.post(
        "/v2/models/mlp/infer", content=compress(GOOD_JSON), headers={"Content-Encoding": encoding}
    )
    expected = mlp_forward(np.asarray([ROW], dtype=np.float32), MLP_SIZES)
    np.testing.assert_allclose(_mlp_output(response), expected, rtol=1e-5, atol=1e-6)


def _doubler_request(count: int, binary_output: bool = False) -> bytes:
    doc: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [count], "data": list(range(count))}]
    }
    if binary_output:
        doc["parameters"] = {"binary_data_output": True}
    return orjson.dumps(doc)


def test_large_json_response_is_gzipped(http: httpx.Client) -> None:
    body = _doubler_request(50_000)
    assert len(body) < LIMIT
    response = http.post("/v2/models/doubler/infer", content=body, headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) < len(response.content)
    (output,) = response.json()["outputs"]
    assert output["data"] == [2.0 * i for i in range(50_000)]


def test_large_binary_response_is_gzipped_with_the_uncompressed_header_length(http: httpx.Client) -> None:
    response = http.post(
        "/v2/models/doubler/infer",
        content=_doubler_request(50_000, binary_output=True),
        headers={"Accept-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-encoding"] == "gzip"
    length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:length])
    (output,) = header["outputs"]
    assert output["parameters"]["binary_data_size"] == 50_000 * 4
    values = np.frombuffer(response.content[length:], dtype="<f4")
    np.testing.assert_array_equal(values, 2.0 * np.arange(50_000, dtype=np.float32))


def test_small_response_is_not_compressed(http: httpx.Client) -> None:
    response = http.post("/v2/models/mlp/infer", content=GOOD_JSON, headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert "content-encoding" not in response.headers


# -- after all of the above -----------------------------------------------------------------------


def test_server_keeps_serving(
    replica: ReplicaProcess, http: httpx.Client, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    """Runs last in this module: every bad request above left the server healthy on every protocol."""
    expected = mlp_forward(np.asarray([ROW], dtype=np.float32), MLP_SIZES)

    assert replica.process.poll() is None, replica.output()
    assert http.get("/v2/health/ready").status_code == 200
    assert http.get("/v2/health/live").status_code == 200

    np.testing.assert_allclose(
        _mlp_output(http.post("/v2/models/mlp/infer", content=GOOD_JSON)), expected, rtol=1e-5, atol=1e-6
    )

    v1_response = http.post("/v1/models/mlp:predict", json={"instances": [ROW]})
    assert v1_response.status_code == 200, v1_response.text
    np.testing.assert_allclose(v1_response.json()["predictions"], expected, rtol=1e-5, atol=1e-6)

    good_binary = binary({"inputs": [binary_input("input", "FP32", [1, 8], 32)]}, fp32(*ROW))
    np.testing.assert_allclose(_mlp_output(send(http, good_binary)), expected, rtol=1e-5, atol=1e-6)

    for message in (grpc_infer(GOOD_GRPC_INPUT), grpc_infer(grpc_input(), raw=[fp32(*ROW)])):
        reply = stub.ModelInfer(message, timeout=30)
        assert [o.name for o in reply.outputs] == ["output"]
        np.testing.assert_allclose(
            np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(1, 4),
            expected,
            rtol=1e-5,
            atol=1e-6,
        )
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
