"""Model repository folders: what models a folder holds, as `ModelSpec`s (no loading, no I/O beyond reads).

Layouts understood, per entry of the folder:

    repo/iris.skops                 -> model "iris" (a single artifact file)
    repo/mlp/model.onnx             -> model "mlp", version "1"
    repo/mlp/3/model.onnx           -> model "mlp", version "3" (the highest numbered version wins)
    repo/mlp/config.pbtxt           -> optional Triton model configuration

From a Triton `config.pbtxt`, servegate reads `platform`/`backend`, `max_batch_size` with
`dynamic_batching.max_queue_delay_microseconds`, `instance_group` counts and the input/output
declarations (used where the artifact records no signature, as in TorchScript).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from predictors.runtimes import model_file
from predictors.spec import ModelSpec
from serving.errors import InvalidInput

__all__ = ["discover", "discover_one"]

_BACKENDS = {
    "onnxruntime_onnx": "onnx",
    "onnxruntime": "onnx",
    "pytorch_libtorch": "pytorch",
    "pytorch": "pytorch",
    "libtorch": "pytorch",
}


def discover(root: Path, template: ModelSpec) -> dict[str, ModelSpec]:
    """Every model in `root`, keyed by name; `template` gives the settings a model's config does not."""
    if not root.is_dir():
        raise InvalidInput(f"model repository {root} is not a directory")
    specs = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        spec = _spec_for(entry, template)
        if spec is not None:
            specs[spec.name] = spec
    return specs


def discover_one(root: Path, name: str, template: ModelSpec) -> ModelSpec | None:
    for entry in (root / name, *root.glob(f"{name}.*")):
        if entry.exists() and not entry.name.startswith("."):
            spec = _spec_for(entry, template)
            if spec is not None and spec.name == name:
                return spec
    return None


def _spec_for(entry: Path, template: ModelSpec) -> ModelSpec | None:
    if entry.is_file():
        if model_file(entry) is None or entry.suffix == ".pbtxt":
            return None
        return dataclasses.replace(template, name=entry.stem, uri=str(entry.resolve()))
    versions = sorted(
        (int(child.name), child)
        for child in entry.iterdir()
        if child.is_dir() and child.name.isdigit() and model_file(child) is not None
    )
    if versions:
        version, folder = str(versions[-1][0]), versions[-1][1]
    elif model_file(entry) is not None:
        version, folder = "1", entry
    else:
        return None
    spec = dataclasses.replace(template, name=entry.name, uri=str(folder.resolve()), version=version)
    config = entry / "config.pbtxt"
    return _apply_triton_config(spec, config) if config.is_file() else spec


def _apply_triton_config(spec: ModelSpec, path: Path) -> ModelSpec:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

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
                "inputs": [_tensor(t, batch_dim) for t in config.input],
                "outputs": [_tensor(t, batch_dim) for t in config.output],
            },
        }
    return dataclasses.replace(spec, **changes)


def _tensor(tensor: Any, batch_dim: list[int]) -> dict[str, Any]:
    from tritonclient.grpc import model_config_pb2

    datatype = model_config_pb2.DataType.Name(tensor.data_type).removeprefix("TYPE_")
    return {
        "name": tensor.name,
        "datatype": "BYTES" if datatype == "STRING" else datatype,
        "shape": batch_dim + list(tensor.dims),
    }
