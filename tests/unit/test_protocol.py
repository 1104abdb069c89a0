"""Pure codec tests: datatypes, V2 REST, V1 REST, gRPC and signature validation, with no servers."""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2 as pb

from predictors.runtime import Signature
from predictors.validation import check_inputs, check_outputs
from serving.errors import InvalidInput
from serving.protocol import grpc_codec, v1, v2
from serving.protocol.datatypes import DATATYPES, datatype_of, from_json_data, from_raw, to_json_data, to_raw
from serving.protocol.types import InferRequest, InferResponse, InferTensor, RequestedOutput, TensorSpec

NUMERIC = [dt for dt in DATATYPES if dt not in ("BYTES", "BOOL")]


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """A small array of `datatype` with distinct values (text for BYTES)."""
    count = int(np.prod(shape))
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = [f"item-{i}".encode() for i in range(count)]
        return out.reshape(shape)
    if datatype == "BOOL":
        return (np.arange(count) % 2 == 0).reshape(shape)
    return np.arange(count).astype(DATATYPES[datatype]).reshape(shape)


def length_prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def binary_body(doc: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    """A V2 binary-extension body: JSON header then the blobs; returns (body, header length)."""
    header = orjson.dumps(doc)
    return header + b"".join(blobs), len(header)


def json_input(name: str = "x", datatype: str = "FP32", shape: Any = (2,), data: Any = (1, 2)) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": list(data)}


def decode_json(doc: object, name: str = "m", version: str | None = None) -> InferRequest:
    return v2.decode_request(orjson.dumps(doc), name, version)


@contextlib.contextmanager
def raises_invalid(*fragments: str) -> Iterator[None]:
    """Expect InvalidInput whose message contains every fragment."""
    with pytest.raises(InvalidInput) as info:
        yield
    for fragment in fragments:
        assert fragment in info.value.message, f"{fragment!r} not in {info.value.message!r}"


# -- datatypes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_json_round_trip(datatype: str) -> None:
    array = sample(datatype)
    wire = orjson.dumps(to_json_data(array), option=orjson.OPT_SERIALIZE_NUMPY)
    back = from_json_data(orjson.loads(wire), datatype, array.shape, "input 'x'")
    assert back.dtype == DATATYPES[datatype]
    assert back.shape == array.shape
    assert back.tolist() == array.tolist()


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_raw_round_trip(datatype: str) -> None:
    array = sample(datatype)
    back = from_raw(to_raw(array), datatype, array.shape, "input 'x'")
    assert back.dtype == DATATYPES[datatype]
    assert back.shape == array.shape
    assert back.tolist() == array.tolist()


@pytest.mark.parametrize("datatype", NUMERIC)
def test_raw_is_little_endian_and_packed(datatype: str) -> None:
    array = sample(datatype, (3,))
    raw = to_raw(array)
    assert len(raw) == 3 * DATATYPES[datatype].itemsize
    assert raw == array.astype(DATATYPES[datatype].newbyteorder("<")).tobytes()


def test_json_data_may_be_nested_row_major() -> None:
    array = from_json_data([[1, 2, 3], [4, 5, 6]], "INT32", (3, 2), "input 'x'")
    assert array.tolist() == [[1, 2], [3, 4], [5, 6]]


def test_bf16_uses_ml_dtypes() -> None:
    array = from_json_data([1.5, -2.0, 0.25], "BF16", (3,), "input 'x'")
    assert array.dtype == np.dtype(ml_dtypes.bfloat16)
    raw = to_raw(array)
    assert raw == np.array([1.5, -2.0, 0.25], dtype=ml_dtypes.bfloat16).tobytes()
    assert len(raw) == 6
    assert to_json_data(array).dtype == np.float32
    assert from_raw(raw, "BF16", (3,), "input 'x'").astype(np.float32).tolist() == [1.5, -2.0, 0.25]


def test_bytes_are_length_prefixed() -> None:
    array = np.array([b"ab", b"", b"xyz"], dtype=object)
    assert to_raw(array) == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00xyz"


def test_bytes_empty_strings_round_trip() -> None:
    array = np.array([b"", b""], dtype=object)
    raw = to_raw(array)
    assert raw == b"\x00" * 8
    assert from_raw(raw, "BYTES", (2,), "input 'x'").tolist() == [b"", b""]


def test_bytes_raw_keeps_non_utf8() -> None:
    raw = length_prefixed(b"\xff\xfe\x00", b"\x80")
    assert from_raw(raw, "BYTES", (2,), "input 'x'").tolist() == [b"\xff\xfe\x00", b"\x80"]


def test_bytes_json_encodes_text_and_numbers() -> None:
    array = from_json_data(["é", "", 3], "BYTES", (3,), "input 'x'")
    assert array.tolist() == ["é".encode(), b"", b"3"]


def test_non_utf8_bytes_cannot_become_json() -> None:
    with raises_invalid("not UTF-8", "binary"):
        to_json_data(np.array([b"\xff"], dtype=object))


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_json_count_mismatch_names_the_input(datatype: str) -> None:
    data = sample(datatype, (3,)).tolist()
    if datatype == "BYTES":
        data = [item.decode() for item in data]
    with raises_invalid("input 'x'", "3 elements", "[2, 2]", "needs 4"):
        from_json_data(data, datatype, (2, 2), "input 'x'")


@pytest.mark.parametrize("datatype", [*NUMERIC, "BOOL"])
def test_raw_count_mismatch_names_the_input(datatype: str) -> None:
    raw = to_raw(sample(datatype, (3,)))
    with raises_invalid("input 'x'", datatype, "[4]"):
        from_raw(raw, datatype, (4,), "input 'x'")


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_json_data_must_be_a_list(datatype: str) -> None:
    with raises_invalid("input 'x'", "must be a list"):
        from_json_data("1,2", datatype, (2,), "input 'x'")


@pytest.mark.parametrize(
    ("datatype", "data"),
    [("FP32", ["one"]), ("INT8", [300]), ("UINT8", [-1]), ("BOOL", ["true"]), ("BOOL", [0.5])],
    ids=["text-as-fp32", "int8-overflow", "uint8-negative", "bool-text", "bool-float"],
)
def test_json_data_that_does_not_fit(datatype: str, data: list) -> None:
    with raises_invalid("input 'x'", datatype):
        from_json_data(data, datatype, (1,), "input 'x'")


@pytest.mark.parametrize(
    ("datatype", "data"),
    [("FP32", [None, 1.0]), ("INT32", [1.5, 2])],
    ids=["null-as-fp32", "fraction-as-int32"],
)
def test_json_data_is_not_coerced_lossily(datatype: str, data: list) -> None:
    # null is not a number and 1.5 is not an integer: the server must not turn them into NaN or 1.
    with raises_invalid("input 'x'", datatype):
        from_json_data(data, datatype, (2,), "input 'x'")


def test_ragged_bytes_json_is_refused() -> None:
    # Nested lists of different lengths must not be stringified into "['a', 'b']" elements.
    with raises_invalid("input 'x'"):
        from_json_data([["a", "b"], ["c"]], "BYTES", (2,), "input 'x'")


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"\x05\x00\x00\x00ab", "claims 5 bytes"),
        (length_prefixed(b"a") + b"\x01\x00", "ends after 1 of 2"),
        (length_prefixed(b"a"), "ends after 1 of 2"),
        (length_prefixed(b"a", b"b") + b"!", "1 bytes left over"),
    ],
    ids=["length-past-end", "truncated-prefix", "missing-element", "over-long"],
)
def test_bad_bytes_buffers(raw: bytes, fragment: str) -> None:
    with raises_invalid("input 'x'", fragment):
        from_raw(raw, "BYTES", (2,), "input 'x'")


def test_bytes_shape_too_large_to_allocate_is_invalid_input() -> None:
    # An empty buffer cannot hold 2**62 elements; the server must say so, not fail to allocate.
    with raises_invalid("input 'x'"):
        from_raw(b"", "BYTES", (2**62,), "input 'x'")


@pytest.mark.parametrize("decode", ["json", "raw"])
def test_unrepresentable_shape_is_invalid_input(decode: str) -> None:
    shape = (0, 2**64 - 1)
    with raises_invalid("input 'x'"):
        if decode == "json":
            from_json_data([], "FP32", shape, "input 'x'")
        else:
            from_raw(b"", "FP32", shape, "input 'x'")


def test_unknown_datatype_lists_the_supported_ones() -> None:
    with raises_invalid("unsupported datatype 'FP8'", *DATATYPES):
        from_json_data([1], "FP8", (1,), "input 'x'")


# -- V2 REST: decode ------------------------------------------------------------------------------


def test_v2_json_request() -> None:
    doc = {
        "id": "r1",
        "inputs": [json_input("x", "FP32", (2, 2), (1, 2, 3, 4)), json_input("s", "BYTES", (1,), ["hi"])],
        "parameters": {"custom": 7},
    }
    request = decode_json(doc, "mlp", "1")
    assert (request.model_name, request.model_version, request.id) == ("mlp", "1", "r1")
    x, s = request.inputs
    assert (x.name, x.datatype, x.shape) == ("x", "FP32", (2, 2))
    assert x.data.dtype == np.float32
    assert x.data.tolist() == [[1, 2], [3, 4]]
    assert s.data.tolist() == [b"hi"]
    assert request.parameters == {"custom": 7}
    assert request.outputs is None
    assert request.binary_outputs is False
    assert request.deadline is None


def test_v2_binary_request_mixes_binary_and_json_inputs() -> None:
    floats = np.array([1.5, 2.5, 3.5], dtype=np.float32)
    text = length_prefixed(b"\xff", b"ok")
    doc = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": 12}},
            json_input("b", "INT64", (2,), (7, 8)),
            {"name": "c", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(text)}},
        ]
    }
    body, length = binary_body(doc, floats.tobytes(), text)
    request = v2.decode_request(body, "m", None, length)
    a, b, c = request.inputs
    assert a.data.tolist() == floats.tolist()
    assert a.parameters == {}, "binary_data_size is protocol, not a tensor parameter"
    assert b.data.tolist() == [7, 8]
    assert c.data.tolist() == [b"\xff", b"ok"]


def test_v2_header_length_without_binary_inputs() -> None:
    body, length = binary_body({"inputs": [json_input()]})
    assert v2.decode_request(body, "m", None, length).inputs[0].data.tolist() == [1, 2]


@pytest.mark.parametrize("length", [-1, 10_000], ids=["negative", "past-the-body"])
def test_v2_header_length_outside_the_body(length: int) -> None:
    body, _ = binary_body({"inputs": [json_input()]})
    with raises_invalid("Inference-Header-Content-Length", str(length)):
        v2.decode_request(body, "m", None, length)


def test_v2_header_length_cutting_the_json() -> None:
    body, length = binary_body({"inputs": [json_input()]})
    with raises_invalid("malformed JSON"):
        v2.decode_request(body, "m", None, length - 3)


def test_v2_binary_data_size_past_the_end() -> None:
    doc = {
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}}]
    }
    body, length = binary_body(doc, b"\x00" * 8)
    with raises_invalid("input 'a'", "binary_data_size 16", "8 bytes left"):
        v2.decode_request(body, "m", None, length)


def test_v2_binary_data_size_not_matching_the_shape() -> None:
    doc = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 8}}]}
    body, length = binary_body(doc, b"\x00" * 8)
    with raises_invalid("input 'a'", "8 bytes", "needs 16"):
        v2.decode_request(body, "m", None, length)


@pytest.mark.parametrize("size", [-1, "8", 1.5, True], ids=["negative", "string", "float", "bool"])
def test_v2_binary_data_size_must_be_a_count(size: object) -> None:
    doc = {
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": size}}]
    }
    body, length = binary_body(doc, b"\x00" * 8)
    with raises_invalid("input 'a'", "binary_data_size"):
        v2.decode_request(body, "m", None, length)


def test_v2_leftover_binary_bytes() -> None:
    doc = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]}
    body, length = binary_body(doc, b"\x00" * 8, b"extra")
    with raises_invalid("13 bytes of binary data", "declare 8"):
        v2.decode_request(body, "m", None, length)


def test_v2_data_and_binary_data_size() -> None:
    doc = {"inputs": [{**json_input("a"), "parameters": {"binary_data_size": 8}}]}
    body, length = binary_body(doc, b"\x00" * 8)
    with raises_invalid("input 'a'", "both 'data' and binary_data_size"):
        v2.decode_request(body, "m", None, length)


@pytest.mark.parametrize(
    ("doc", "fragments"),
    [
        (b"{not json", ("malformed JSON",)),
        (b"[1, 2]", ("must be a JSON object",)),
        ({}, ("non-empty 'inputs'",)),
        ({"inputs": []}, ("non-empty 'inputs'",)),
        ({"inputs": {"x": 1}}, ("non-empty 'inputs'",)),
        ({"inputs": [7]}, ("input #0", "JSON object")),
        ({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}, ("input #0", "'name'")),
        ({"inputs": [{"name": "x", "shape": [1], "data": [1]}]}, ("input 'x'", "'datatype'")),
        ({"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]}, ("input 'x'", "shape")),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, ("input 'x'", "no 'data'")),
        ({"inputs": [json_input(shape=[-2], data=[1, 2])]}, ("input 'x'", "non-negative integers")),
        ({"inputs": [json_input(shape=[2.0], data=[1, 2])]}, ("input 'x'", "non-negative integers")),
        ({"inputs": [json_input(shape=[True, 2], data=[1, 2])]}, ("input 'x'", "non-negative integers")),
        ({"inputs": [json_input(shape="2", data=[1, 2])]}, ("input 'x'", "non-negative integers")),
        ({"inputs": [json_input(datatype="FP8")]}, ("unsupported datatype 'FP8'", "FP32", "BYTES")),
        ({"inputs": [{**json_input(), "parameters": [1]}]}, ("input 'x'", "'parameters'")),
        ({"inputs": [json_input()], "parameters": "x"}, ("request", "'parameters'")),
        ({"inputs": [json_input()], "id": 42}, ("'id'", "string")),
        ({"inputs": [json_input()], "outputs": {"y": {}}}, ("'outputs'", "list")),
        ({"inputs": [json_input()], "outputs": [{"binary_data": True}]}, ("output #0", "'name'")),
        ({"inputs": [json_input()], "parameters": {"timeout": -1}}, ("'timeout'", "microseconds")),
        ({"inputs": [json_input()], "parameters": {"timeout": "1s"}}, ("'timeout'", "microseconds")),
    ],
    ids=[
        "malformed-json",
        "not-an-object",
        "no-inputs",
        "empty-inputs",
        "inputs-not-a-list",
        "input-not-an-object",
        "missing-name",
        "missing-datatype",
        "missing-shape",
        "missing-data",
        "negative-dim",
        "float-dim",
        "bool-dim",
        "shape-not-a-list",
        "unknown-datatype",
        "input-parameters-not-object",
        "request-parameters-not-object",
        "non-string-id",
        "outputs-not-a-list",
        "output-without-name",
        "negative-timeout",
        "string-timeout",
    ],
)
def test_v2_bad_requests(doc: object, fragments: tuple[str, ...]) -> None:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    with raises_invalid(*fragments):
        v2.decode_request(body, "m", None)


def test_v2_requested_outputs_and_binary_preferences() -> None:
    doc = {
        "inputs": [json_input()],
        "outputs": [
            {"name": "a", "parameters": {"binary_data": True, "classification": 2}},
            {"name": "b", "parameters": {"binary_data": False}},
            {"name": "c"},
        ],
        "parameters": {"binary_data_output": True},
    }
    request = decode_json(doc)
    assert request.outputs == [
        RequestedOutput("a", True, {"classification": 2}),
        RequestedOutput("b", False, {}),
        RequestedOutput("c", None, {}),
    ]
    assert request.binary_outputs is True


def test_v2_timeout_parameter_sets_a_deadline() -> None:
    before = time.monotonic()
    request = decode_json({"inputs": [json_input()], "parameters": {"timeout": 2_000_000}})
    after = time.monotonic()
    assert request.deadline is not None
    assert before + 2.0 <= request.deadline <= after + 2.0


def test_v2_zero_timeout_means_no_deadline() -> None:
    assert decode_json({"inputs": [json_input()], "parameters": {"timeout": 0}}).deadline is None


def test_v2_protocol_parameters_are_stripped() -> None:
    parameters = {
        "binary_data_output": False,
        "timeout": 5,
        "priority": 1,
        "sequence_id": 3,
        "sequence_start": True,
        "sequence_end": False,
        "temperature": 0.5,
    }
    request = decode_json({"inputs": [json_input()], "parameters": parameters})
    assert request.parameters == {"temperature": 0.5}


# -- V2 REST: encode ------------------------------------------------------------------------------


def _response(*tensors: InferTensor) -> InferResponse:
    return InferResponse("m", "1", list(tensors), id="r1")


def _tensor(name: str, array: np.ndarray, datatype: str | None = None) -> InferTensor:
    return InferTensor(name, datatype or datatype_of(array), array.shape, array)


def _split(body: bytes, length: int | None) -> tuple[dict, bytes]:
    if length is None:
        return orjson.loads(body), b""
    return orjson.loads(body[:length]), body[length:]


def test_v2_encode_json() -> None:
    out = np.array([[0.5, 1.25]], dtype=np.float32)
    body, length = v2.encode_response(_response(_tensor("y", out)), InferRequest("m", []))
    assert length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "id": "r1",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 1.25]}],
    }


def test_v2_encode_numpy_float32_is_plain_json_numbers() -> None:
    out = np.array([0.1, 3.0], dtype=np.float32)
    body, _ = v2.encode_response(_response(_tensor("y", out)), InferRequest("m", []))
    data = orjson.loads(body)["outputs"][0]["data"]
    assert data == pytest.approx([0.1, 3.0], rel=1e-6)
    assert all(isinstance(v, float) for v in data)


def test_v2_encode_binary_for_all_outputs() -> None:
    a = np.array([1.0, 2.0], dtype=np.float32)
    b = np.array([b"x", b"\xff"], dtype=object)
    request = InferRequest("m", [], binary_outputs=True)
    body, length = v2.encode_response(_response(_tensor("a", a), _tensor("b", b)), request)
    assert length is not None
    header, blobs = _split(body, length)
    assert length == len(orjson.dumps(header))
    entries = header["outputs"]
    assert [e["parameters"]["binary_data_size"] for e in entries] == [8, len(to_raw(b))]
    assert all("data" not in e for e in entries)
    assert blobs == a.tobytes() + to_raw(b)


def test_v2_encode_per_output_preference_beats_the_request_level() -> None:
    a = np.array([1, 2], dtype=np.int32)
    b = np.array([3, 4], dtype=np.int32)
    request = InferRequest(
        "m", [], outputs=[RequestedOutput("a", True), RequestedOutput("b", False)], binary_outputs=False
    )
    body, length = v2.encode_response(_response(_tensor("a", a), _tensor("b", b)), request)
    header, blobs = _split(body, length)
    a_entry, b_entry = header["outputs"]
    assert a_entry["parameters"] == {"binary_data_size": 8}
    assert b_entry["data"] == [3, 4]
    assert blobs == a.tobytes()

    request.outputs = [RequestedOutput("a", None), RequestedOutput("b", False)]
    request.binary_outputs = True
    body, length = v2.encode_response(_response(_tensor("a", a), _tensor("b", b)), request)
    header, blobs = _split(body, length)
    assert "binary_data_size" in header["outputs"][0]["parameters"]
    assert header["outputs"][1]["data"] == [3, 4]
    assert blobs == a.tobytes()


# -- V1 REST --------------------------------------------------------------------------------------

MLP_INPUTS = (TensorSpec("input", "FP32", (-1, 3)),)
TWO_INPUTS = (TensorSpec("a", "FP32", (-1,)), TensorSpec("b", "BYTES", (-1,)))


def v1_decode(doc: object, inputs: tuple[TensorSpec, ...] = MLP_INPUTS) -> InferRequest:
    return v1.decode_request(orjson.dumps(doc), "m", inputs)


def test_v1_instances_feed_the_single_input() -> None:
    request = v1_decode({"instances": [[1, 2, 3], [4, 5, 6]]})
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("input", "FP32", (2, 3))
    assert tensor.data.dtype == np.float32


def test_v1_instances_of_objects_feed_named_inputs() -> None:
    request = v1_decode({"instances": [{"a": 1.0, "b": "x"}, {"a": 2.0, "b": "y"}]}, TWO_INPUTS)
    a, b = request.inputs
    assert (a.name, a.datatype, a.data.tolist()) == ("a", "FP32", [1.0, 2.0])
    assert (b.name, b.datatype, b.data.tolist()) == ("b", "BYTES", [b"x", b"y"])


def test_v1_columnar_inputs() -> None:
    request = v1_decode({"inputs": {"a": [1, 2, 3], "b": ["p", "q", "r"]}}, TWO_INPUTS)
    assert [t.shape for t in request.inputs] == [(3,), (3,)]
    assert request.inputs[1].data.tolist() == [b"p", b"q", b"r"]


def test_v1_without_a_signature_guesses_datatypes() -> None:
    request = v1_decode({"instances": [1.5, 2.5]}, ())
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype) == (v1.DEFAULT_INPUT, "FP64")


@pytest.mark.parametrize(
    ("doc", "inputs", "fragments"),
    [
        ({"instances": [[1, 2, 3], [4, 5]]}, MLP_INPUTS, ("input 'input'", "ragged")),
        ({"instances": [1, 2]}, TWO_INPUTS, ("several inputs", "a, b")),
        ({"instances": []}, MLP_INPUTS, ("'instances'", "non-empty")),
        ({"instances": {"input": [1]}}, MLP_INPUTS, ("'instances'", "non-empty list")),
        ({"inputs": {}}, MLP_INPUTS, ("'inputs'", "empty")),
        ({"data": [1]}, MLP_INPUTS, ("'instances' or 'inputs'",)),
        ({"instances": [{"a": 1.0, "b": "x"}, {"a": 2.0}]}, TWO_INPUTS, ("instances[1]", "'b'")),
        ({"instances": [["x", "y", "z"]]}, MLP_INPUTS, ("input 'input'", "FP32")),
    ],
    ids=[
        "ragged",
        "plain-rows-several-inputs",
        "empty-instances",
        "instances-not-a-list",
        "empty-columnar",
        "neither-key",
        "object-missing-input",
        "text-for-fp32",
    ],
)
def test_v1_bad_requests(doc: object, inputs: tuple[TensorSpec, ...], fragments: tuple[str, ...]) -> None:
    with raises_invalid(*fragments):
        v1_decode(doc, inputs)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([1, 2, 3], dtype=np.int64), [1, 2, 3]),
        (np.array([[0.5, 1.0], [2.0, 4.0]], dtype=np.float32), [[0.5, 1.0], [2.0, 4.0]]),
        (np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object), [["a", "b"], ["c", "d"]]),
        (np.array([b"x", b"y"], dtype=object), ["x", "y"]),
    ],
    ids=["int64", "fp32-2d", "bytes-2d", "bytes-1d"],
)
def test_v1_predictions(array: np.ndarray, expected: list) -> None:
    body = v1.encode_response(_response(_tensor("y", array), _tensor("z", np.array([9]))))
    assert orjson.loads(body) == {"predictions": expected}


# -- gRPC -----------------------------------------------------------------------------------------


def grpc_request(*inputs: pb.ModelInferRequest.InferInputTensor, raw: list[bytes] | None = None) -> Any:
    message = pb.ModelInferRequest(model_name="m", model_version="2", id="g1", inputs=list(inputs))
    message.raw_input_contents.extend(raw or [])
    return message


def grpc_input(name: str, datatype: str, shape: list[int], **contents: Any) -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if contents:
        tensor.contents.CopyFrom(pb.InferTensorContents(**contents))
    return tensor


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_grpc_raw_contents(datatype: str) -> None:
    array = sample(datatype)
    request = grpc_codec.decode_request(grpc_request(grpc_input("x", datatype, [2, 3]), raw=[to_raw(array)]))
    (tensor,) = request.inputs
    assert (request.model_name, request.model_version, request.id) == ("m", "2", "g1")
    assert tensor.data.dtype == DATATYPES[datatype]
    assert tensor.data.tolist() == array.tolist()


TYPED = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@pytest.mark.parametrize(("datatype", "field"), list(TYPED.items()))
def test_grpc_typed_contents(datatype: str, field: str) -> None:
    array = sample(datatype)
    tensor = grpc_input("x", datatype, [2, 3], **{field: array.ravel().tolist()})
    (decoded,) = grpc_codec.decode_request(grpc_request(tensor)).inputs
    assert decoded.data.dtype == DATATYPES[datatype]
    assert decoded.data.shape == (2, 3)
    assert decoded.data.tolist() == array.tolist()


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_grpc_half_floats_need_raw_contents(datatype: str) -> None:
    tensor = grpc_input("x", datatype, [2], fp32_contents=[1.0, 2.0])
    with raises_invalid("input 'x'", datatype, "raw_input_contents"):
        grpc_codec.decode_request(grpc_request(tensor))


def test_grpc_unknown_datatype() -> None:
    with raises_invalid("unsupported datatype 'FP8'"):
        grpc_codec.decode_request(grpc_request(grpc_input("x", "FP8", [1], fp32_contents=[1.0])))


def test_grpc_mixed_raw_and_typed() -> None:
    a = grpc_input("a", "FP32", [1])
    b = grpc_input("b", "FP32", [1], fp32_contents=[1.0])
    raw = [np.float32(1).tobytes(), np.float32(2).tobytes()]
    with raises_invalid("input 'b'", "typed contents", "raw_input_contents"):
        grpc_codec.decode_request(grpc_request(a, b, raw=raw))


def test_grpc_raw_entries_must_match_the_inputs() -> None:
    a = grpc_input("a", "FP32", [1])
    b = grpc_input("b", "FP32", [1])
    with raises_invalid("raw_input_contents has 1 entries", "2 inputs"):
        grpc_codec.decode_request(grpc_request(a, b, raw=[np.float32(1).tobytes()]))


def test_grpc_raw_count_mismatch() -> None:
    with raises_invalid("input 'x'", "8 bytes", "needs 12"):
        grpc_codec.decode_request(grpc_request(grpc_input("x", "FP32", [3]), raw=[b"\x00" * 8]))


def test_grpc_typed_count_mismatch() -> None:
    with raises_invalid("input 'x'", "2 elements", "needs 3"):
        grpc_codec.decode_request(grpc_request(grpc_input("x", "INT64", [3], int64_contents=[1, 2])))


def test_grpc_shape_whose_product_overflows_is_invalid_input() -> None:
    # 2**62 * 4 wraps to 0 in int64: an empty tensor must not pass the element count check.
    with raises_invalid("input 'x'"):
        grpc_codec.decode_request(grpc_request(grpc_input("x", "FP32", [2**62, 4])))


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (pb.ModelInferRequest(inputs=[grpc_input("x", "FP32", [1], fp32_contents=[1.0])]), "model_name"),
        (pb.ModelInferRequest(model_name="m"), "at least one input"),
        (grpc_request(grpc_input("", "FP32", [1], fp32_contents=[1.0])), "input #0 needs a name"),
    ],
    ids=["no-model-name", "no-inputs", "unnamed-input"],
)
def test_grpc_bad_requests(message: Any, fragment: str) -> None:
    with raises_invalid(fragment):
        grpc_codec.decode_request(message)


def test_grpc_parameters_round_trip() -> None:
    values = {"flag": True, "count": 3, "ratio": 0.5, "label": "x"}
    message = pb.ModelInferRequest()
    grpc_codec.to_parameters(message.parameters, values)
    assert grpc_codec.from_parameters(message.parameters) == values
    assert message.parameters["flag"].WhichOneof("parameter_choice") == "bool_param"
    assert message.parameters["count"].WhichOneof("parameter_choice") == "int64_param"


def test_grpc_request_parameters_and_timeout() -> None:
    message = grpc_request(grpc_input("x", "FP32", [1], fp32_contents=[1.0]))
    grpc_codec.to_parameters(message.parameters, {"timeout": 3_000_000, "priority": 1, "custom": "v"})
    message.outputs.add(name="y")
    before = time.monotonic()
    request = grpc_codec.decode_request(message, deadline=before + 10)
    assert request.parameters == {"custom": "v"}
    assert request.outputs == [RequestedOutput("y", None, {})]
    assert request.deadline is not None and before + 3 <= request.deadline < before + 10
    # The transport deadline wins when it is sooner.
    assert grpc_codec.decode_request(message, deadline=before + 1).deadline == before + 1


def test_grpc_encode_uses_raw_output_contents() -> None:
    a = np.array([[1.0, 2.0]], dtype=np.float32)
    b = np.array([b"p", b"\xff"], dtype=object)
    response = InferResponse("m", "1", [_tensor("a", a), _tensor("b", b)], id="g1", parameters={"n": 2})
    response.outputs[0].parameters = {"note": "x"}
    message = grpc_codec.encode_response(response)
    assert (message.model_name, message.model_version, message.id) == ("m", "1", "g1")
    assert [(o.name, o.datatype, list(o.shape)) for o in message.outputs] == [
        ("a", "FP32", [1, 2]),
        ("b", "BYTES", [2]),
    ]
    assert not any(o.HasField("contents") for o in message.outputs)
    assert list(message.raw_output_contents) == [a.tobytes(), length_prefixed(b"p", b"\xff")]
    assert grpc_codec.from_parameters(message.outputs[0].parameters) == {"note": "x"}
    assert grpc_codec.from_parameters(message.parameters) == {"n": 2}


# -- validation -----------------------------------------------------------------------------------

SIGNATURE = Signature(
    inputs=(TensorSpec("a", "FP32", (-1, 4)), TensorSpec("b", "INT64", (2,))),
    outputs=(TensorSpec("y", "FP32", (-1,)), TensorSpec("z", "FP32", (-1,))),
)


def zeros(name: str, datatype: str, shape: tuple[int, ...]) -> InferTensor:
    return InferTensor(name, datatype, shape, np.zeros(shape, dtype=DATATYPES[datatype]))


GOOD_A = zeros("a", "FP32", (3, 4))
GOOD_B = zeros("b", "INT64", (2,))


@pytest.mark.parametrize(
    "inputs",
    [[GOOD_A, GOOD_B], [GOOD_B, GOOD_A], [zeros("a", "FP32", (0, 4)), GOOD_B]],
    ids=["in-order", "any-order", "empty-batch"],
)
def test_check_inputs_accepts(inputs: list[InferTensor]) -> None:
    check_inputs(inputs, SIGNATURE)


@pytest.mark.parametrize(
    ("inputs", "fragments"),
    [
        ([GOOD_A], ("missing input 'b'", "a (FP32 [-1, 4])", "b (INT64 [2])")),
        ([], ("missing inputs 'a', 'b'",)),
        ([GOOD_A, GOOD_B, zeros("c", "FP32", (1,))], ("unknown input 'c'", "a (FP32")),
        ([GOOD_A, GOOD_A, GOOD_B], ("input 'a' is given twice",)),
        ([zeros("a", "FP64", (3, 4)), GOOD_B], ("input 'a'", "datatype FP64", "expects FP32")),
        ([zeros("a", "FP32", (12,)), GOOD_B], ("input 'a'", "shape [12]", "[-1, 4]")),
        ([zeros("a", "FP32", (3, 5)), GOOD_B], ("input 'a'", "shape [3, 5]", "[-1, 4]")),
        ([GOOD_A, zeros("b", "INT64", (3,))], ("input 'b'", "shape [3]", "[2]")),
    ],
    ids=[
        "missing",
        "missing-both",
        "unknown",
        "duplicate",
        "wrong-datatype",
        "wrong-rank",
        "wrong-dim",
        "fixed-dim",
    ],
)
def test_check_inputs_refuses(inputs: list[InferTensor], fragments: tuple[str, ...]) -> None:
    with raises_invalid(*fragments):
        check_inputs(inputs, SIGNATURE)


def test_empty_signature_accepts_anything() -> None:
    check_inputs([zeros("whatever", "BOOL", (1, 2, 3)), zeros("w2", "INT8", ())], Signature((), ()))
    assert check_outputs([RequestedOutput("anything")], Signature((), ())) == ["anything"]


def test_unshaped_input_accepts_any_shape() -> None:
    signature = Signature((TensorSpec("x", "FP32", ()),), ())
    for shape in [(), (5,), (2, 3, 4)]:
        check_inputs([zeros("x", "FP32", shape)], signature)
    with raises_invalid("datatype INT32"):
        check_inputs([zeros("x", "INT32", (1,))], signature)


def test_check_outputs() -> None:
    assert check_outputs(None, SIGNATURE) is None
    assert check_outputs([RequestedOutput("z"), RequestedOutput("y")], SIGNATURE) == ["z", "y"]
    with raises_invalid("unknown output 'w'", "y (FP32 [-1])"):
        check_outputs([RequestedOutput("w")], SIGNATURE)
    with raises_invalid("requested twice"):
        check_outputs([RequestedOutput("y"), RequestedOutput("y")], SIGNATURE)
