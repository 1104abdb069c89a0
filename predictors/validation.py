"""Checks of a request against a model's declared signature (pure functions, no I/O).

An empty input signature accepts any inputs (a python model that declares none); an input whose
declared shape is `()` accepts any shape (TorchScript without a recorded signature).
"""

from __future__ import annotations

from collections.abc import Sequence

from predictors.runtime import Signature
from serving.errors import InvalidInput
from serving.protocol.types import InferTensor, RequestedOutput, TensorSpec

__all__ = ["check_inputs", "check_outputs", "describe"]


def describe(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{s.name} ({s.datatype} {list(s.shape) if s.shape else 'any shape'})" for s in specs)


def check_inputs(inputs: Sequence[InferTensor], signature: Signature) -> None:
    if not signature.inputs:
        return
    declared = {spec.name: spec for spec in signature.inputs}
    seen = set()
    for tensor in inputs:
        spec = declared.get(tensor.name)
        if spec is None:
            raise InvalidInput(f"unknown input '{tensor.name}'; the model takes {describe(signature.inputs)}")
        if tensor.name in seen:
            raise InvalidInput(f"input '{tensor.name}' is given twice")
        seen.add(tensor.name)
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"input '{tensor.name}' has datatype {tensor.datatype} but the model expects {spec.datatype}"
            )
        if spec.shape and not _shape_fits(tensor.shape, spec.shape):
            raise InvalidInput(
                f"input '{tensor.name}' has shape {list(tensor.shape)} "
                f"but the model expects {list(spec.shape)}"
            )
    missing = [name for name in declared if name not in seen]
    if missing:
        raise InvalidInput(
            f"missing input{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}; "
            f"the model takes {describe(signature.inputs)}"
        )


def _shape_fits(shape: Sequence[int], declared: Sequence[int]) -> bool:
    return len(shape) == len(declared) and all(
        d == -1 or d == s for s, d in zip(shape, declared, strict=True)
    )


def check_outputs(requested: Sequence[RequestedOutput] | None, signature: Signature) -> list[str] | None:
    """Names of the requested outputs (None: all), after checking they exist."""
    if requested is None:
        return None
    names = [out.name for out in requested]
    if signature.outputs:
        known = {spec.name for spec in signature.outputs}
        for name in names:
            if name not in known:
                raise InvalidInput(
                    f"unknown output '{name}'; the model returns {describe(signature.outputs)}"
                )
    if len(set(names)) != len(names):
        raise InvalidInput("an output is requested twice")
    return names
