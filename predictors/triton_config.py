"""Triton model configuration (`config.pbtxt`): read into a ModelSpec, rendered from a served model.

Read: `platform`/`backend` (the format), `max_batch_size` with
`dynamic_batching.max_queue_delay_microseconds` (batching), `instance_group` counts (instances),
and the input/output declarations (the signature, where the artifact records none, as in
TorchScript). Rendered: the same fields, so Triton tools that call `get_model_config`
(perf_analyzer, model_analyzer) see a consistent configuration. In Triton's convention, when
`max_batch_size` > 0 the `dims` leave the batch dimension out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from predictors.spec import ModelSpec
from serving.errors import InvalidInput
from serving.protocol.types import ModelMetadata, TensorSpec

__all__ = ["apply_config", "render_config"]

_BACKENDS = {
    "onnxruntime_onnx": "onnx",
    "onnxruntime": "onnx",
    "pytorch_libtorch": "pytorch",
    "pytorch": "pytorch",
    "libtorch": "pytorch",
}


def apply_config(spec: ModelSpec, path: Path) -> ModelSpec:
    """`spec` with what the Triton configuration at `path` says."""
    try:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise InvalidInput(f"{path}: {exc}") from None
    changes: dict[str, Any] = {}
    backend = config.platform or config.backend
    if backend:
        changes["format"] = _BACKENDS.get(backend, backend)
    if config.max_batch_size > 0 and config.HasField("dynamic_batching"):
        changes["max_batch_size"] = config.max_batch_size
        changes["max_latency_ms"] = config.dynamic_batching.max_queue_delay_microseconds / 1000.0
    instances = sum(group.count or 1 for group in config.instance_group)
    if instances:
        changes["instances"] = instances
    batch_dim = [-1] if config.max_batch_size > 0 else []
    if config.input or config.output:
        changes["options"] = {
            **spec.options,
            "signature": {
                "inputs": [_read_tensor(t, batch_dim) for t in config.input],
                "outputs": [_read_tensor(t, batch_dim) for t in config.output],
            },
        }
    return dataclasses.replace(spec, **changes)


def _read_tensor(tensor: Any, batch_dim: list[int]) -> dict[str, Any]:
    datatype = model_config_pb2.DataType.Name(tensor.data_type).removeprefix("TYPE_")
    return {
        "name": tensor.name,
        "datatype": "BYTES" if datatype == "STRING" else datatype,
        "shape": batch_dim + list(tensor.dims),
    }


def render_config(metadata: ModelMetadata, spec: ModelSpec, batching: bool) -> dict[str, Any]:
    """The model's configuration in Triton's JSON form (as `GET /v2/models/<m>/config` returns it)."""
    config: dict[str, Any] = {
        "name": metadata.name,
        "platform": metadata.platform,
        "max_batch_size": spec.max_batch_size if batching else 0,
        "input": [_render_tensor(t, batching) for t in metadata.inputs],
        "output": [_render_tensor(t, batching) for t in metadata.outputs],
        "instance_group": [{"count": spec.instances, "kind": "KIND_CPU"}],
    }
    if batching:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": int(spec.max_latency_ms * 1000)}
    return config


def _render_tensor(tensor: TensorSpec, batching: bool) -> dict[str, Any]:
    datatype = "STRING" if tensor.datatype == "BYTES" else tensor.datatype
    dims = list(tensor.shape[1:] if batching else tensor.shape)
    return {"name": tensor.name, "data_type": f"TYPE_{datatype}", "dims": dims}
