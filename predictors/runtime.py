"""The contract between the replica and a model runtime.

A runtime turns an artifact into something that maps named numpy arrays to named numpy arrays. The
replica owns everything else: protocols, validation against the declared signature, batching,
metrics, timeouts. Runtimes whose libraries block (ONNX Runtime, torch, sklearn) subclass
`BlockingRuntime`; async ones (triton, async user classes) subclass `Runtime` directly.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from predictors.spec import ModelSpec
from serving.protocol.types import TensorSpec

__all__ = ["BlockingRuntime", "ComputeCost", "Runtime", "RuntimeRequest", "Signature"]


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batchable(self) -> bool:
        """Whether every input and output has a variable first (batch) dimension."""
        specs = (*self.inputs, *self.outputs)
        return bool(specs) and all(spec.shape and spec.shape[0] == -1 for spec in specs)


@dataclass(slots=True)
class RuntimeRequest:
    inputs: dict[str, np.ndarray]
    #: names of the outputs to compute; None for all.
    outputs: Sequence[str] | None = None
    #: custom request parameters (protocol-level ones such as binary_data_output are removed).
    parameters: Mapping[str, Any] = field(default_factory=dict)
    #: client headers; empty for a merged batch, whose requests came with different headers.
    headers: Mapping[str, str] = field(default_factory=dict)


class Runtime(ABC):
    """A loaded model. Lifecycle: construct (cheap) -> `load()` -> `infer()`* -> `unload()`."""

    #: the V2 metadata `platform` string, e.g. "onnxruntime_onnx".
    platform: ClassVar[str]
    #: whether the artifact must be downloaded to a local path before `load` (False for triton, python).
    needs_artifact: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec, path: Path | None) -> None:
        self.spec = spec
        self.path = path

    @abstractmethod
    async def load(self) -> Signature:
        """Load the model and return its signature; raise with a clear message on a bad artifact."""

    @abstractmethod
    async def infer(self, request: RuntimeRequest) -> dict[str, np.ndarray]:
        """Run the model; return the requested outputs (all when `request.outputs` is None)."""

    async def unload(self) -> None:  # noqa: B027 - optional hook
        """Release the model's resources."""


@dataclass(slots=True)
class ComputeCost:
    """A moving estimate of one model call's duration, to choose where the next call runs.

    Handing a call to a worker thread and back costs on the order of 100-200 microseconds of CPU;
    for a model that computes in less than that, the hand-off is most of the work. Calls estimated
    below `inline_below_s` therefore run on the event loop thread itself (as KServe runs sync
    models); slower ones run in worker threads so the loop keeps serving. Unknown cost counts as
    slow, and every call updates the estimate, so a model that slows down moves back to threads.
    """

    inline_below_s: float = 0.0005
    weight: float = 0.2
    estimate_s: float | None = None

    def observe(self, seconds: float) -> None:
        # Races between threads only lose an update, which an estimate can afford.
        prior = self.estimate_s
        self.estimate_s = seconds if prior is None else prior + self.weight * (seconds - prior)

    @property
    def cheap(self) -> bool:
        return self.estimate_s is not None and self.estimate_s < self.inline_below_s


class BlockingRuntime(Runtime):
    """A runtime whose library calls block: `load_blocking` runs in a worker thread, `predict` in a
    worker thread or, for cheap calls of a model without batching or parallel instances, inline."""

    def __init__(self, spec: ModelSpec, path: Path | None) -> None:
        super().__init__(spec, path)
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, spec.instances), thread_name_prefix=f"model-{spec.name}"
        )
        # Batches and parallel instances exist to overlap work, which only threads give.
        self._may_inline = spec.instances == 1 and not spec.batching
        self.cost = ComputeCost()

    @abstractmethod
    def load_blocking(self) -> Signature: ...

    @abstractmethod
    def predict(self, request: RuntimeRequest) -> dict[str, np.ndarray]: ...

    def unload_blocking(self) -> None:
        """Release resources; the default drops nothing beyond what garbage collection frees."""

    async def load(self) -> Signature:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.load_blocking)

    async def infer(self, request: RuntimeRequest) -> dict[str, np.ndarray]:
        if self._may_inline and self.cost.cheap:
            return self._timed_predict(request)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed_predict, request)

    def _timed_predict(self, request: RuntimeRequest) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            return self.predict(request)
        finally:
            self.cost.observe(time.perf_counter() - started)

    async def unload(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.unload_blocking)
        self._executor.shutdown(wait=False)
