"""KServe V1 (TensorFlow Serving style) REST: `{"instances": [...]}` or `{"inputs": ...}`.

JSON carries no datatypes, so instances are read with the datatypes the model declares:
- a list of values feeds the model's single input (row format);
- a list of objects feeds inputs by name, one object per row;
- `"inputs": {name: [...]}` feeds inputs by name, one list per input (columnar format).
`predictions` hold the rows of the model's first output, as KServe's V1 models return them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from serving.errors import InvalidInput
from serving.protocol.datatypes import from_json_data, to_json_data
from serving.protocol.types import InferRequest, InferResponse, InferTensor, TensorSpec
from serving.protocol.v2 import loads_object

__all__ = ["decode_request", "encode_response"]

#: name given to the single input of a model that declares none (a python model accepting anything).
DEFAULT_INPUT = "input-0"


def decode_request(body: bytes, model_name: str, inputs: Sequence[TensorSpec]) -> InferRequest:
    doc = loads_object(body)
    if "instances" in doc:
        columns = _rows_to_columns(doc["instances"], "instances", inputs)
    elif "inputs" in doc:
        raw = doc["inputs"]
        if isinstance(raw, dict):
            if not raw:
                raise InvalidInput("'inputs' must not be empty")
            columns = raw
        else:
            columns = _rows_to_columns(raw, "inputs", inputs)
    else:
        raise InvalidInput("V1 request needs 'instances' or 'inputs'")
    specs = {spec.name: spec for spec in inputs}
    tensors = [_tensor(name, values, specs.get(name)) for name, values in columns.items()]
    return InferRequest(model_name=model_name, inputs=tensors)


def _rows_to_columns(rows: object, key: str, inputs: Sequence[TensorSpec]) -> dict[str, Any]:
    if not isinstance(rows, list) or not rows:
        raise InvalidInput(f"'{key}' must be a non-empty list")
    if all(isinstance(row, dict) for row in rows):
        names = [spec.name for spec in inputs] or list(rows[0])
        columns: dict[str, list[Any]] = {name: [] for name in names}
        for index, row in enumerate(rows):
            for name in names:
                if name not in row:
                    raise InvalidInput(f"{key}[{index}] has no value for input '{name}'")
                columns[name].append(row[name])
        return columns
    if len(inputs) > 1:
        names = ", ".join(spec.name for spec in inputs)
        raise InvalidInput(
            f"the model has several inputs ({names}); send each instance as an object keyed by input name"
        )
    name = inputs[0].name if inputs else DEFAULT_INPUT
    return {name: rows}


def _tensor(name: str, values: Any, spec: TensorSpec | None) -> InferTensor:
    what = f"input '{name}'"
    if not isinstance(values, list):
        values = [values]
    try:
        probe = np.asarray(values, dtype=object if spec and spec.datatype == "BYTES" else None)
    except ValueError:
        raise InvalidInput(f"{what}: instances are ragged; every instance needs the same shape") from None
    if probe.dtype == object and any(isinstance(x, list) for x in probe.ravel()):
        raise InvalidInput(f"{what}: instances are ragged; every instance needs the same shape")
    datatype = spec.datatype if spec is not None else _guess_datatype(probe, what)
    shape = tuple(probe.shape)
    data = from_json_data(values, datatype, shape, what)
    return InferTensor(name, datatype, shape, data)


def _guess_datatype(probe: np.ndarray, what: str) -> str:
    if probe.dtype.kind == "f":
        return "FP64"
    if probe.dtype.kind in "iu":
        return "INT64"
    if probe.dtype.kind == "b":
        return "BOOL"
    if probe.dtype.kind in "USO":
        return "BYTES"
    raise InvalidInput(f"{what}: cannot tell the datatype of the instances")


def encode_response(response: InferResponse) -> bytes:
    if not response.outputs:
        return orjson.dumps({"predictions": []})
    first = response.outputs[0]
    flat = to_json_data(first.data)
    if first.datatype == "BYTES":
        rows: Any = _nest(flat, first.shape)
    elif first.shape:
        rows = np.asarray(flat).reshape(first.shape)
    else:
        rows = np.asarray(flat).tolist()[0]
    return orjson.dumps({"predictions": rows}, option=orjson.OPT_SERIALIZE_NUMPY)


def _nest(flat: list[Any], shape: tuple[int, ...]) -> Any:
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]
