"""PyTorch: TorchScript archives (`torch.jit.save`) and `torch.export` archives (`torch.export.save`).

Which kind an artifact is comes from its zip layout (a torch.export archive has an `archive_format`
record, TorchScript has `constants.pkl` and `code/`), falling back to the suffix (`.pt2` is
torch.export). A plain `torch.save()` pickle is refused: loading it would run code, and it holds
no graph to serve anyway.

Signatures:

- torch.export records everything: the user inputs' names, dtypes and shapes come from the graph's
  fake-tensor metadata (symbolic dimensions become -1). Outputs are named after the keys when the
  program returns a flat dict, else `output__0`, `output__1`, ... (Triton's convention).
- TorchScript records only the names of `forward`'s arguments. Datatypes and shapes come from an
  explicit signature, `{"inputs": [{"name", "datatype", "shape"}, ...], "outputs": [...]}`, given
  as the `signature` option or embedded in the archive as `servegate.json`
  (`torch.jit.save(m, f, _extra_files={"servegate.json": json.dumps(signature)})`); the option wins.
  Without one, every Tensor argument of `forward` is declared FP32 with shape `()`, which means
  "any shape" (the rank is unknown, not zero), and outputs are `output__0`, ... as FP32 with shape
  `()`; their real datatype is whatever the model returns, so such outputs are not checked against
  the declaration. A model declared this way cannot be batched (no known batch dimension).
  Optional and defaulted arguments are left to their defaults unless a signature names them.

Options: `device` is "auto" (CUDA when available), "cpu" or "cuda[:N]" (fails the load without CUDA);
`signature` as above (TorchScript only).
"""

from __future__ import annotations

import contextlib
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from predictors.runtime import BlockingRuntime, RuntimeRequest, Signature
from predictors.runtimes import model_file
from predictors.trust import require_trust, torch_archive_kind, why_code_runs
from serving.errors import InvalidInput, ModelFailure
from serving.protocol.datatypes import DATATYPES
from serving.protocol.types import TensorSpec

__all__ = ["TorchRuntime", "parse_specs"]

_TORCH_TYPES: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.uint16: "UINT16",
    torch.uint32: "UINT32",
    torch.uint64: "UINT64",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
    torch.bfloat16: "BF16",
}
_SIGNATURE_FILE = "servegate.json"
_BF16 = DATATYPES["BF16"]


class TorchRuntime(BlockingRuntime):
    platform = "pytorch_libtorch"

    # Defaults so that unload() is safe after a failed load.
    _module: Any = None
    _device = torch.device("cpu")

    def load_blocking(self) -> Signature:
        artifact = model_file(self.path) if self.path else None
        if artifact is None:
            raise ModelFailure(f"no TorchScript or torch.export file found at {self.path}")
        self._device = _device(self.spec.options.get("device", "auto"))
        if self.spec.threads:
            # Process-wide: every torch model in this replica shares the intra-op pool.
            torch.set_num_threads(self.spec.threads)
            # Concurrency comes from the replica's executor (`instances`), not inter-op threads. torch
            # allows this once per process, before any parallel work, and raises after that.
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(1)
        if _archive_kind(artifact) == "export":
            signature = self._load_export(artifact)
        else:
            signature = self._load_torchscript(artifact)
        self._output_names = [spec.name for spec in signature.outputs]
        return signature

    def _load_export(self, artifact: Path) -> Signature:
        require_trust(
            self.spec,
            f"load {artifact.name}",
            why_code_runs("pytorch"),
            instead="save the model with torch.jit.save (TorchScript) or export it to ONNX instead",
        )
        try:
            # A file object, because torch.export.load insists on a .pt2 suffix for paths.
            with artifact.open("rb") as f:
                program = torch.export.load(f)
        except Exception as exc:
            raise ModelFailure(f"torch.export could not load {artifact.name}: {exc}") from None
        if self._device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, self._device)
        signature = _export_signature(program, artifact.name)
        self._module = program.module()
        self._input_names = [spec.name for spec in signature.inputs]
        self._in_spec = program.call_spec.in_spec
        self._checked = {spec.name: DATATYPES[spec.datatype] for spec in signature.outputs}
        return signature

    def _load_torchscript(self, artifact: Path) -> Signature:
        extra = {_SIGNATURE_FILE: ""}
        try:
            module = torch.jit.load(str(artifact), map_location=self._device, _extra_files=extra)
        except Exception as exc:
            raise ModelFailure(f"torch.jit could not load {artifact.name}: {_first_line(exc)}") from None
        declared = self.spec.options.get("signature")
        source = "the 'signature' option"
        if declared is None and extra[_SIGNATURE_FILE]:
            source = f"{_SIGNATURE_FILE} in {artifact.name}"
            try:
                declared = json.loads(extra[_SIGNATURE_FILE])
            except ValueError as exc:
                raise ModelFailure(f"{source} is not valid JSON: {exc}") from None
        signature = _torchscript_signature(module.forward.schema, declared, source)
        module.eval()
        self._module = module
        self._input_names = None
        self._checked = {}
        if declared is not None and "outputs" in declared:
            self._checked = {spec.name: DATATYPES[spec.datatype] for spec in signature.outputs}
        return signature

    def predict(self, request: RuntimeRequest) -> dict[str, np.ndarray]:
        tensors = {name: _to_torch(name, array).to(self._device) for name, array in request.inputs.items()}
        with torch.inference_mode():
            if self._input_names is None:  # TorchScript takes forward()'s arguments by name
                result = self._module(**tensors)
            else:  # torch.export: rebuild the (args, kwargs) structure the program was traced with
                args, kwargs = pytree.tree_unflatten([tensors[n] for n in self._input_names], self._in_spec)
                result = self._module(*args, **kwargs)
            outputs = _name_outputs(result, self._output_names)
        names = self._output_names if request.outputs is None else request.outputs
        arrays = {}
        for name in names:
            if name not in self._output_names:
                raise InvalidInput(f"unknown output '{name}'; the model has {', '.join(self._output_names)}")
            if name not in outputs:
                raise ModelFailure(f"the model returned no '{name}', which its signature declares")
            arrays[name] = _to_numpy(outputs[name])
            expected = self._checked.get(name)
            if expected is not None and arrays[name].dtype != expected:
                raise ModelFailure(
                    f"output '{name}' came back as {arrays[name].dtype}; the signature declares {expected}"
                )
        return arrays

    def unload_blocking(self) -> None:
        self._module = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


def _device(option: Any) -> torch.device:
    name = str(option).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelFailure(
                f"device '{option}' was asked for, but this torch build or machine has no CUDA"
            )
        try:
            return torch.device(name)
        except RuntimeError:
            pass
    raise ModelFailure(f"unknown device '{option}'; expected auto, cpu or cuda[:N]")


def _archive_kind(artifact: Path) -> str:
    """Which loader an archive needs ("export" or "torchscript"): its zip layout, then its suffix."""
    try:
        kind = torch_archive_kind(artifact)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelFailure(f"{artifact.name} is not a TorchScript or torch.export archive: {exc}") from None
    if kind == "pickle":
        raise ModelFailure(
            f"{artifact.name} is a torch.save() pickle (a state_dict or a pickled module), which cannot be "
            "served: loading it runs code and it holds no graph; save the model with torch.export.save "
            "(a .pt2 file) or torch.jit.save instead"
        )
    return kind


def _datatype(dtype: torch.dtype, what: str) -> str:
    datatype = _TORCH_TYPES.get(dtype)
    if datatype is None:
        raise ModelFailure(f"{what} has dtype {dtype}, which the V2 protocol cannot carry")
    return datatype


def _fake_spec(name: str, value: object, what: str) -> TensorSpec:
    if not isinstance(value, torch.Tensor):
        raise ModelFailure(
            f"{what} '{name}' is a {type(value).__name__}, not a tensor; only tensors can be served"
        )
    # Dimensions that are not plain ints are symbolic (dynamic): variable.
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
    return TensorSpec(name, _datatype(value.dtype, f"{what} '{name}'"), shape)


def _export_signature(program: torch.export.ExportedProgram, artifact: str) -> Signature:
    from torch.export.graph_signature import OutputKind

    nodes = {node.name: node for node in program.graph.nodes}
    inputs = tuple(
        _fake_spec(name, nodes[name].meta.get("val"), "input") for name in program.graph_signature.user_inputs
    )
    values = [
        nodes[spec.arg.name].meta.get("val") if spec.arg.name in nodes else None
        for spec in program.graph_signature.output_specs
        if spec.kind == OutputKind.USER_OUTPUT
    ]
    out_spec = program.call_spec.out_spec
    names = [f"output__{i}" for i in range(len(values))]
    if (
        out_spec is not None
        and out_spec.type is dict
        and all(child.is_leaf() for child in out_spec.children())
    ):
        names = [str(key) for key in out_spec.context]
    if len(names) != len(values):
        raise ModelFailure(f"cannot match the outputs of {artifact} to its output structure")
    outputs = tuple(_fake_spec(name, value, "output") for name, value in zip(names, values, strict=True))
    return Signature(inputs=inputs, outputs=outputs)


def _torchscript_signature(schema: torch.FunctionSchema, declared: object, source: str) -> Signature:
    arguments = schema.arguments[1:]  # the first is the module itself
    by_name = {arg.name: arg for arg in arguments}
    if declared is not None and not isinstance(declared, Mapping):
        raise ModelFailure(f"{source} must be an object with 'inputs' and 'outputs' lists")
    declared = declared or {}

    if "inputs" in declared:
        inputs = parse_specs(declared["inputs"], f"{source}: inputs")
        unknown = [spec.name for spec in inputs if spec.name not in by_name]
        if unknown:
            raise ModelFailure(
                f"{source} declares inputs {unknown} that forward() does not take; it takes {list(by_name)}"
            )
        named = {spec.name for spec in inputs}
        missing = [arg.name for arg in arguments if not arg.has_default_value() and arg.name not in named]
        if missing:
            raise ModelFailure(f"{source} leaves out forward() arguments {missing}, which have no default")
    else:
        inputs = []
        for arg in arguments:
            if arg.type.kind() == "TensorType":
                inputs.append(TensorSpec(arg.name, "FP32", ()))
            elif not arg.has_default_value():
                raise ModelFailure(
                    f"forward() takes '{arg.name}' of type {arg.type}, which an inference request cannot "
                    "carry; give it a default"
                )

    returns = schema.returns[0].type if len(schema.returns) == 1 else None
    if returns is not None and returns.kind() == "TensorType":
        count: int | None = 1
    elif returns is not None and returns.kind() == "TupleType":
        count = len(returns.elements())
    else:
        count = None  # a dict or list: how many (and which keys) only the signature can say
    if "outputs" in declared:
        outputs = parse_specs(declared["outputs"], f"{source}: outputs")
        if count is not None and len(outputs) != count:
            raise ModelFailure(f"{source} declares {len(outputs)} outputs, but forward() returns {count}")
    elif count is None:
        raise ModelFailure(
            f"forward() returns {schema.returns[0].type if schema.returns else 'nothing'}, so its outputs "
            f"cannot be named without a signature; embed {_SIGNATURE_FILE} or pass the 'signature' option"
        )
    else:
        outputs = [TensorSpec(f"output__{i}", "FP32", ()) for i in range(count)]
    return Signature(inputs=tuple(inputs), outputs=tuple(outputs))


def parse_specs(entries: object, what: str) -> list[TensorSpec]:
    """Tensor specs from a declared `[{name, datatype, shape}, ...]`; `what` names it in errors."""
    if not isinstance(entries, list):
        raise ModelFailure(f"{what} must be a list of {{name, datatype, shape}}")
    specs = []
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise ModelFailure(f"{what}: each entry needs a 'name', got {entry!r}")
        datatype = entry.get("datatype", "FP32")
        if datatype not in DATATYPES or datatype == "BYTES":
            raise ModelFailure(
                f"{what}: '{entry['name']}' has datatype {datatype!r}, which torch cannot take"
            )
        shape = entry.get("shape", [])
        if not isinstance(shape, list | tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
        ):
            raise ModelFailure(
                f"{what}: '{entry['name']}' has shape {shape!r}; use integers, -1 for variable"
            )
        specs.append(TensorSpec(entry["name"], datatype, tuple(shape)))
    return specs


def _name_outputs(result: object, names: list[str]) -> dict[str, object]:
    if isinstance(result, Mapping) and all(isinstance(v, torch.Tensor) for v in result.values()):
        return {str(key): value for key, value in result.items()}
    leaves = [result] if isinstance(result, torch.Tensor) else pytree.tree_leaves(result)
    if len(leaves) != len(names):
        raise ModelFailure(
            f"the model returned {len(leaves)} outputs, but its signature declares {len(names)}"
        )
    return dict(zip(names, leaves, strict=True))


def _to_torch(name: str, array: np.ndarray) -> torch.Tensor:
    if array.dtype == object or array.dtype.kind in ("U", "S"):
        raise InvalidInput(f"input '{name}' is BYTES, which torch models cannot take")
    if not array.flags.writeable:
        array = array.copy()  # torch.from_numpy warns on read-only buffers (most wire-decoded arrays)
    array = np.ascontiguousarray(array)
    if array.dtype == _BF16:
        # numpy has no bfloat16 torch understands: share the bits as uint16.
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _to_numpy(value: object) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise ModelFailure(f"the model returned a {type(value).__name__} where a tensor was expected")
    tensor = value.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(_BF16)
    return tensor.numpy()


def _first_line(exc: BaseException) -> str:
    # torch's loader errors go on for paragraphs about miniz internals; the first line says it.
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
