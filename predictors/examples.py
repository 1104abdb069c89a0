"""Example models made on the spot (no downloads): ONNX MLPs and an every-datatype identity model.

Used by `make up`, the tests and the benchmarks. The MLPs are built directly as ONNX graphs with
seeded random weights, so they need neither torch nor a network.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["IDENTITY_DATATYPES", "make_identity_onnx", "make_mlp_onnx", "mlp_forward"]

_OPSET = 17
_IR_VERSION = 9

#: V2 datatype -> ONNX element type, for the identity model.
IDENTITY_DATATYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BF16": TensorProto.BFLOAT16,
    "BYTES": TensorProto.STRING,
}


def mlp_weights(sizes: Sequence[int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        weight = rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=(fan_in, fan_out)).astype(np.float32)
        bias = rng.normal(0.0, 0.01, size=(fan_out,)).astype(np.float32)
        layers.append((weight, bias))
    return layers


def mlp_forward(x: np.ndarray, sizes: Sequence[int], seed: int = 0) -> np.ndarray:
    """The reference computation of `make_mlp_onnx(sizes, seed)`, in numpy."""
    layers = mlp_weights(sizes, seed)
    for i, (weight, bias) in enumerate(layers):
        x = x @ weight + bias
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def make_mlp_onnx(
    path: str | Path,
    sizes: Sequence[int] = (64, 256, 256, 10),
    seed: int = 0,
    input_name: str = "input",
    output_name: str = "output",
) -> Path:
    """An MLP (Gemm + Relu layers) with a dynamic batch axis: [-1, sizes[0]] -> [-1, sizes[-1]]."""
    nodes, initializers = [], []
    current = input_name
    layers = mlp_weights(sizes, seed)
    for i, (weight, bias) in enumerate(layers):
        initializers += [numpy_helper.from_array(weight, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        last = i == len(layers) - 1
        gemm_out = output_name if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"a{i}"]))
            current = f"a{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializer=initializers,
    )
    return _save(graph, path)


def make_identity_onnx(
    path: str | Path, datatypes: Sequence[str] = tuple(IDENTITY_DATATYPES), width: int = -1
) -> Path:
    """One Identity per datatype: input `in_<DT>` -> output `out_<DT>`, shape [batch, width]."""
    dim = "width" if width < 0 else width
    graph = helper.make_graph(
        [helper.make_node("Identity", [f"in_{dt}"], [f"out_{dt}"]) for dt in datatypes],
        "identity",
        [
            helper.make_tensor_value_info(f"in_{dt}", IDENTITY_DATATYPES[dt], ["batch", dim])
            for dt in datatypes
        ],
        [
            helper.make_tensor_value_info(f"out_{dt}", IDENTITY_DATATYPES[dt], ["batch", dim])
            for dt in datatypes
        ],
    )
    return _save(graph, path)


def _save(graph: onnx.GraphProto, path: str | Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
