"""Open Inference Protocol over gRPC (`inference.GRPCInferenceService`) <-> core types.

The message types are Triton's (`tritonclient.grpc.service_pb2`), a superset of KServe's
`grpc_predict_v2.proto` with the same field numbers, so clients of either work. Inputs arrive as
`raw_input_contents` or typed `contents`; outputs always leave as `raw_output_contents`, as Triton
answers.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from serving.errors import InvalidInput
from serving.protocol.datatypes import element_count, from_raw, numpy_dtype, to_raw, validate_shape
from serving.protocol.types import InferRequest, InferResponse, InferTensor, RequestedOutput

__all__ = ["decode_request", "decode_response", "encode_response", "from_parameters", "to_parameters"]

#: datatype -> the typed `InferTensorContents` field that may carry it (FP16/BF16 travel raw only).
_CONTENTS_FIELD = {
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
_PROTOCOL_PARAMETERS = frozenset({"timeout", "priority", "sequence_id", "sequence_start", "sequence_end"})


def from_parameters(parameters: Any) -> dict[str, Any]:
    """A protobuf map<string, InferParameter> as a plain dict."""
    out = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice else None
    return out


def to_parameters(target: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)


def decode_request(message: pb.ModelInferRequest, deadline: float | None = None) -> InferRequest:
    if not message.model_name:
        raise InvalidInput("ModelInferRequest needs a model_name")
    if not message.inputs:
        raise InvalidInput("ModelInferRequest needs at least one input")
    raw_contents = message.raw_input_contents
    if raw_contents and len(raw_contents) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw_contents)} entries "
            f"but the request has {len(message.inputs)} inputs"
        )
    inputs = []
    for index, tensor in enumerate(message.inputs):
        what = f"input '{tensor.name}'"
        if not tensor.name:
            raise InvalidInput(f"input #{index} needs a name")
        shape = validate_shape(list(tensor.shape), what)
        if raw_contents:
            if tensor.HasField("contents"):
                raise InvalidInput(f"{what} has typed contents while the request uses raw_input_contents")
            data = from_raw(raw_contents[index], tensor.datatype, shape, what)
        else:
            data = _from_contents(tensor, shape, what)
        inputs.append(
            InferTensor(tensor.name, tensor.datatype, shape, data, from_parameters(tensor.parameters))
        )

    parameters = from_parameters(message.parameters)
    timeout_us = parameters.get("timeout")
    if isinstance(timeout_us, int) and timeout_us > 0:
        own = time.monotonic() + timeout_us / 1e6
        deadline = own if deadline is None else min(deadline, own)
    outputs = [RequestedOutput(out.name, None, from_parameters(out.parameters)) for out in message.outputs]
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version or None,
        id=message.id or None,
        inputs=inputs,
        outputs=outputs or None,
        parameters={k: v for k, v in parameters.items() if k not in _PROTOCOL_PARAMETERS},
        deadline=deadline,
    )


def decode_response(message: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """A ModelInferResponse's outputs by name (raw or typed contents)."""
    raw_contents = message.raw_output_contents
    outputs = {}
    for index, tensor in enumerate(message.outputs):
        what = f"output '{tensor.name}'"
        shape = validate_shape(list(tensor.shape), what)
        if index < len(raw_contents):
            outputs[tensor.name] = from_raw(raw_contents[index], tensor.datatype, shape, what)
        else:
            outputs[tensor.name] = _from_contents(tensor, shape, what)
    return outputs


def _from_contents(tensor: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        numpy_dtype(tensor.datatype)  # unknown datatypes get the standard message
        raise InvalidInput(f"{what}: {tensor.datatype} data must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"{what}: contents hold {len(values)} elements but shape {list(shape)} needs {count}"
        )
    if tensor.datatype == "BYTES":
        data = np.empty(count, dtype=object)
        data[:] = list(values)
        return data.reshape(shape)
    try:
        return np.asarray(values, dtype=numpy_dtype(tensor.datatype)).reshape(shape)
    except OverflowError:
        raise InvalidInput(f"{what}: a value does not fit {tensor.datatype}") from None


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    for tensor in response.outputs:
        out = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.parameters:
            to_parameters(out.parameters, tensor.parameters)
        message.raw_output_contents.append(to_raw(tensor.data))
    if response.parameters:
        to_parameters(message.parameters, response.parameters)
    return message
