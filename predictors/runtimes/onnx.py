"""ONNX Runtime: inputs, outputs and datatypes come from the session itself."""

from __future__ import annotations

import ctypes

import numpy as np
import onnxruntime as ort

from predictors.runtime import BlockingRuntime, RuntimeRequest, Signature
from predictors.runtimes import model_file
from serving.errors import InvalidInput, ModelFailure
from serving.protocol.datatypes import DATATYPES
from serving.protocol.types import TensorSpec

__all__ = ["OnnxRuntime"]

_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}
_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16


def _spec(arg: ort.NodeArg) -> TensorSpec:
    datatype = _ORT_TYPES.get(arg.type)
    if datatype is None:
        raise ModelFailure(f"ONNX {arg.name!r} has type {arg.type}, which the V2 protocol cannot carry")
    # Symbolic or unknown dimensions (strings, None) are variable.
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


class OnnxRuntime(BlockingRuntime):
    platform = "onnxruntime_onnx"

    session: ort.InferenceSession

    def load_blocking(self) -> Signature:
        artifact = model_file(self.path) if self.path else None
        if artifact is None:
            raise ModelFailure(f"no .onnx file found at {self.path}")
        options = ort.SessionOptions()
        if self.spec.threads:
            options.intra_op_num_threads = self.spec.threads
            # Concurrency comes from the replica's executor (`instances`), not inter-op threads.
            options.inter_op_num_threads = 1
            # Idle pool threads spin only on CPUs the replica owns beyond them (predictors.threads).
            spin = "1" if self.spec.spinning else "0"
            options.add_session_config_entry("session.intra_op.allow_spinning", spin)
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(artifact), options, providers=_providers())
        except Exception as exc:  # ORT raises several private exception types for bad files
            raise ModelFailure(f"ONNX Runtime could not load {artifact.name}: {exc}") from None
        signature = Signature(
            inputs=tuple(_spec(arg) for arg in self.session.get_inputs()),
            outputs=tuple(_spec(arg) for arg in self.session.get_outputs()),
        )
        self._bf16_outputs = {spec.name for spec in signature.outputs if spec.datatype == "BF16"}
        self._output_names = [spec.name for spec in signature.outputs]
        return signature

    def predict(self, request: RuntimeRequest) -> dict[str, np.ndarray]:
        names = list(request.outputs) if request.outputs is not None else self._output_names
        feeds: dict[str, object] = {}
        for name, array in request.inputs.items():
            if array.dtype == DATATYPES["BF16"]:
                feeds[name] = _bf16_value(array)
            elif array.dtype == object:
                feeds[name] = _as_text(name, array)
            else:
                feeds[name] = array
        if self._bf16_outputs.intersection(names):
            outputs = self._run_with_ort_values(names, feeds)
        else:
            outputs = dict(zip(names, self.session.run(names, feeds), strict=True))
        return {name: _as_bytes(array) if array.dtype == object else array for name, array in outputs.items()}

    def _run_with_ort_values(self, names: list[str], feeds: dict[str, object]) -> dict[str, np.ndarray]:
        # Plain run() cannot hand back bfloat16; OrtValues can, but cannot hold strings.
        values = {}
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                if value.dtype == object:
                    raise InvalidInput("ONNX Runtime cannot take BYTES inputs with BF16 outputs in one call")
                value = ort.OrtValue.ortvalue_from_numpy(value)
            values[name] = value
        results = self.session.run_with_ort_values(names, values)
        return {name: _from_ort_value(value) for name, value in zip(names, results, strict=True)}

    def unload_blocking(self) -> None:
        del self.session


def _providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    # ONNX Runtime's Python binding takes string tensors as str (it would stringify bytes as "b'..'")
    # and hands them to the model UTF-8 encoded, so only UTF-8 text can pass through it faithfully.
    try:
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array)
    except UnicodeDecodeError:
        raise InvalidInput(
            f"input '{name}' holds bytes that are not UTF-8 text, "
            "which ONNX Runtime string tensors cannot carry"
        ) from None


def _as_bytes(array: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda s: s.encode("utf-8") if isinstance(s, str) else s, otypes=[object])(array)


def _bf16_value(array: np.ndarray) -> ort.OrtValue:
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
        np.ascontiguousarray(array).view(np.uint16), _BFLOAT16
    )


def _from_ort_value(value: ort.OrtValue) -> np.ndarray:
    if value.element_type() != _BFLOAT16:
        return value.numpy()
    shape = value.shape()
    count = int(np.prod(shape))
    buffer = (ctypes.c_uint16 * count).from_address(value.data_ptr())
    return np.frombuffer(buffer, dtype=np.uint16).copy().view(DATATYPES["BF16"]).reshape(shape)
