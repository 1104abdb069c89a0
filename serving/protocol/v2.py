"""Open Inference Protocol (V2) over REST: JSON and the binary tensor extension.

A binary request is a JSON header of `Inference-Header-Content-Length` bytes followed by the raw
tensors of every input that declares `parameters.binary_data_size`, in input order. Outputs go back
as binary when the request asks for it, per output (`parameters.binary_data`) or for all
(`parameters.binary_data_output`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson

from serving.errors import InvalidInput
from serving.protocol.datatypes import from_json_data, from_raw, to_json_data, to_raw, validate_shape
from serving.protocol.types import InferRequest, InferResponse, InferTensor, RequestedOutput

__all__ = ["HEADER_LENGTH", "decode_request", "decode_response", "encode_response", "loads_object"]

HEADER_LENGTH = "inference-header-content-length"
#: request parameters that steer the protocol or the server rather than the model.
_PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "timeout", "priority", "sequence_id", "sequence_start", "sequence_end"}
)
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def loads_object(raw: bytes | memoryview, what: str = "request body") -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON in {what}: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def decode_request(
    body: bytes,
    model_name: str,
    model_version: str | None,
    header_length: int | None = None,
) -> InferRequest:
    """Decode a V2 REST inference request (JSON, or JSON header + binary tensors)."""
    header, binary = _split_body(body, header_length)
    doc = loads_object(header, "inference request")

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("inference request needs a non-empty 'inputs' list")
    inputs: list[InferTensor] = []
    offset = 0
    for index, raw in enumerate(raw_inputs):
        tensor, size = _decode_input(raw, index, binary, offset)
        inputs.append(tensor)
        offset += size
    if offset != len(binary):
        raise InvalidInput(
            f"the request carries {len(binary)} bytes of binary data but its inputs declare {offset}"
        )

    parameters = _parameters(doc.get("parameters"), "request")
    request = InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        id=_request_id(doc.get("id")),
        outputs=_decode_outputs(doc.get("outputs")),
        binary_outputs=bool(parameters.get("binary_data_output", False)),
        deadline=_deadline(parameters.get("timeout")),
        parameters={k: v for k, v in parameters.items() if k not in _PROTOCOL_PARAMETERS},
    )
    return request


def _split_body(body: bytes, header_length: int | None) -> tuple[bytes | memoryview, memoryview]:
    """(the JSON header, the binary tensors after it)."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {header_length} but the body has only {len(body)} bytes"
            )
        view = memoryview(body)
        header, binary = view[:header_length], view[header_length:]
    return header, binary


def decode_response(body: bytes, header_length: int | None = None) -> dict[str, np.ndarray]:
    """A V2 REST inference answer's outputs by name (JSON, or JSON header + binary tensors)."""
    header, binary = _split_body(body, header_length)
    raw_outputs = loads_object(header, "inference response").get("outputs")
    if not isinstance(raw_outputs, list):
        raise InvalidInput("inference response needs an 'outputs' list")
    outputs, offset = {}, 0
    for index, raw in enumerate(raw_outputs):
        tensor, size = _decode_input(raw, index, binary, offset)
        outputs[tensor.name] = tensor.data
        offset += size
    return outputs


def _decode_input(raw: object, index: int, binary: memoryview, offset: int) -> tuple[InferTensor, int]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"input #{index} must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"input #{index} needs a 'name'")
    what = f"input '{name}'"
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidInput(f"{what} needs a 'datatype'")
    shape = validate_shape(raw.get("shape"), what)
    parameters = _parameters(raw.get("parameters"), what)
    size = parameters.pop("binary_data_size", None)
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"{what}: binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise InvalidInput(
                f"{what}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes left)"
            )
        if "data" in raw:
            raise InvalidInput(f"{what} has both 'data' and binary_data_size")
        data = from_raw(binary[offset : offset + size], datatype, shape, what)
        return InferTensor(name, datatype, shape, data, parameters), size
    if "data" not in raw:
        raise InvalidInput(f"{what} has no 'data' (and no binary_data_size)")
    data = from_json_data(raw["data"], datatype, shape, what)
    return InferTensor(name, datatype, shape, data, parameters), 0


def _decode_outputs(raw: object) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list")
    outputs = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"requested output #{index} needs a 'name'")
        parameters = _parameters(item.get("parameters"), f"output '{item['name']}'")
        binary = parameters.pop("binary_data", None)
        outputs.append(RequestedOutput(item["name"], None if binary is None else bool(binary), parameters))
    return outputs


def _parameters(raw: object, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{what}: 'parameters' must be a JSON object")
    return dict(raw)


def _request_id(raw: object) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    raise InvalidInput("request 'id' must be a string")


def _deadline(timeout_us: object) -> float | None:
    """Triton's `timeout` request parameter, in microseconds, as a monotonic deadline."""
    if timeout_us is None:
        return None
    if not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or timeout_us < 0:
        raise InvalidInput("parameter 'timeout' must be a non-negative integer (microseconds)")
    return time.monotonic() + timeout_us / 1e6 if timeout_us else None


def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """Encode a response; returns (body, JSON header length) — the length is None for pure JSON."""
    preferences = {out.name: out for out in request.outputs} if request.outputs else {}
    outputs = []
    blobs: list[bytes] = []
    for tensor in response.outputs:
        requested = preferences.get(tensor.name)
        binary = requested.binary if requested is not None and requested.binary is not None else None
        if binary is None:
            binary = request.binary_outputs
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary:
            blob = to_raw(tensor.data)
            blobs.append(blob)
            entry["parameters"] = {**tensor.parameters, "binary_data_size": len(blob)}
        else:
            if tensor.parameters:
                entry["parameters"] = tensor.parameters
            entry["data"] = to_json_data(tensor.data)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = orjson.dumps(doc, option=_DUMPS_OPTIONS)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
