"""Protocol-agnostic inference types.

Every protocol adapter decodes into these once and encodes from them once; the data plane and the
models never see a wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "InferRequest",
    "InferResponse",
    "InferTensor",
    "ModelMetadata",
    "RequestedOutput",
    "TensorSpec",
]


@dataclass(slots=True)
class InferTensor:
    """A named tensor; `data` already has `shape` and the numpy dtype of `datatype`."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    #: True/False when the client asked for binary (or JSON) data for this output; None: no preference.
    binary: bool | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model_name: str
    inputs: list[InferTensor]
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    #: None means "every output of the model".
    outputs: list[RequestedOutput] | None = None
    #: request-level preference for binary outputs (V2 `binary_data_output`).
    binary_outputs: bool = False
    #: absolute deadline (time.monotonic()) after which the client has given up.
    deadline: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def input_arrays(self) -> dict[str, np.ndarray]:
        return {tensor.name: tensor.data for tensor in self.inputs}


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[InferTensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """An input or output a model declares; -1 in `shape` is a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [spec.as_dict() for spec in self.inputs],
            "outputs": [spec.as_dict() for spec in self.outputs],
        }
