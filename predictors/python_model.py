"""The base class for serving your own Python code (model format "python").

Subclass `PythonModel`, override `predict`, and point the server at the class with an import path,
`package.module:ClassName` or `path/to/file.py:ClassName`::

    class Doubler(PythonModel):
        inputs = (TensorSpec("x", "FP32", (-1,)),)
        outputs = (TensorSpec("y", "FP32", (-1,)),)

        def predict(self, data, context):
            return {"y": data["x"] * 2}

Every hook may be a plain `def` or an `async def`. Plain ones run in worker threads (`instances` of
them per model), so a slow `predict` never stalls the server; async ones run on the event loop and
must not block it. The runtime decides which once, when the model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from serving.protocol.types import TensorSpec

__all__ = ["Context", "PythonModel"]


@dataclass(frozen=True, slots=True)
class Context:
    """What a request carries besides its inputs."""

    #: custom request parameters.
    parameters: Mapping[str, Any] = field(default_factory=dict)
    #: client headers; empty for a merged batch, whose requests came with different headers.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: names of the outputs the client asked for; None for all.
    outputs: tuple[str, ...] | None = None


class PythonModel:
    """A user model: override `predict` (required) and optionally `load`, `preprocess`, `postprocess`
    and `unload`.

    A request flows `preprocess(inputs) -> predict(data) -> postprocess(result)`. The final result
    is either a dict of output name -> array (lists and other array-likes are converted with
    `np.asarray`; str/bytes become BYTES tensors), or a single array, named after the single
    declared output, or `output-0` when no outputs are declared.

    `__init__` runs in a worker thread, so do asynchronous set-up in an `async def load`.
    """

    #: the declared inputs; None accepts any named inputs of any datatype. Read after `load`.
    inputs: ClassVar[Sequence[TensorSpec] | None] = None
    #: the declared outputs; None allows any outputs. Read after `load`.
    outputs: ClassVar[Sequence[TensorSpec] | None] = None

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.options = options

    def load(self) -> None:
        """Load weights and other state; called once, before any request."""

    def preprocess(self, inputs: dict[str, np.ndarray], context: Context) -> Any:
        """Turn the request's named arrays into what `predict` takes; the default passes them on."""
        return inputs

    def predict(self, data: Any, context: Context) -> Any:
        """Run the model on what `preprocess` returned."""
        raise NotImplementedError

    def postprocess(self, result: Any, context: Context) -> dict[str, np.ndarray] | np.ndarray:
        """Turn what `predict` returned into the response; the default passes it on."""
        return result

    def unload(self) -> None:
        """Release resources; called once when the model is unloaded."""
