"""A model slot in a replica: its spec, runtime, state, batcher and call timing."""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from typing import Any

import numpy as np

from predictors.batcher import DynamicBatcher
from predictors.metrics import ReplicaMetrics
from predictors.runtime import Runtime, RuntimeRequest, Signature
from predictors.spec import ModelSpec
from predictors.triton_config import render_config
from serving.errors import ModelFailure, ModelNotFound, ModelNotReady, as_serving_error
from serving.protocol.types import ModelMetadata

__all__ = ["ModelState", "ServedModel"]

log = logging.getLogger(__name__)


class ModelState(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


class ServedModel:
    """One model as the replica serves it; `call` is the only way into the runtime."""

    def __init__(self, spec: ModelSpec, metrics: ReplicaMetrics) -> None:
        self.spec = spec
        self.state = ModelState.LOADING
        self.reason = ""
        self.runtime: Runtime | None = None
        self.signature = Signature((), ())
        self._metrics = metrics
        self._batcher: DynamicBatcher | None = None
        self._slots = asyncio.Semaphore(max(1, spec.instances))
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return self.spec.version

    def _set_state(self, state: ModelState, reason: str = "") -> None:
        self.state, self.reason = state, reason

    async def start(self, runtime: Runtime) -> None:
        """Load `runtime`; on failure the model is FAILED with the reason, and nothing is raised."""
        started = time.perf_counter()
        try:
            self.signature = await runtime.load()
        except Exception as exc:
            error = as_serving_error(exc)
            log.error("model %s failed to load: %s", self.name, error.message)
            self._set_state(ModelState.FAILED, error.message)
            return
        self.runtime = runtime
        if self.spec.batching:
            if not self.signature.batchable and self.signature.inputs:
                log.warning("model %s has no variable batch dimension; batching is off", self.name)
            else:
                self._batcher = DynamicBatcher(
                    self._run,
                    self.spec.max_batch_size,
                    self.spec.max_latency_ms / 1000.0,
                    max_concurrent_batches=self.spec.instances,
                    observer=functools.partial(self._metrics.observe_call, self.name),
                )
        self._set_state(ModelState.READY)
        log.info(
            "model %s version %s ready (%s, %.2fs, batching %s)",
            self.name, self.version, runtime.platform, time.perf_counter() - started,
            f"up to {self.spec.max_batch_size} rows" if self.batching else "off",
        )  # fmt: skip

    def fail(self, reason: str) -> None:
        self._set_state(ModelState.FAILED, reason)

    def metadata(self) -> ModelMetadata:
        platform = self.runtime.platform if self.runtime is not None else ""
        return ModelMetadata(
            name=self.name,
            versions=(self.version,),
            platform=platform,
            inputs=self.signature.inputs,
            outputs=self.signature.outputs,
        )

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def batching(self) -> bool:
        """Whether requests are merged (asked for, and the model has a batch dimension)."""
        return self._batcher is not None

    def config(self) -> dict[str, Any]:
        return render_config(self.metadata(), self.spec, self.batching)

    def ensure_ready(self) -> None:
        if self.state is ModelState.READY:
            return
        if self.state is ModelState.UNAVAILABLE:
            raise ModelNotFound(f"model '{self.name}' is not loaded")
        detail = f": {self.reason}" if self.reason else ""
        raise ModelNotReady(f"model '{self.name}' is {self.state.value.lower()}{detail}")

    async def call(self, request: RuntimeRequest) -> dict[str, np.ndarray]:
        self.ensure_ready()
        self._inflight += 1
        self._idle.clear()
        try:
            if self._batcher is not None:
                return await self._batcher.submit(request)
            return await self._call_unbatched(request)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _call_unbatched(self, request: RuntimeRequest) -> dict[str, np.ndarray]:
        queued = time.perf_counter()
        async with self._slots:
            started = time.perf_counter()
            outputs = await self._run(request)
            finished = time.perf_counter()
        self._metrics.observe_call(self.name, _rows(request), [started - queued], finished - started)
        return outputs

    async def _run(self, request: RuntimeRequest) -> dict[str, np.ndarray]:
        assert self.runtime is not None
        outputs = await self.runtime.infer(request)
        if not isinstance(outputs, dict):
            raise ModelFailure(f"model '{self.name}' returned {type(outputs).__name__}, not named outputs")
        return outputs

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Let in-flight requests finish (up to the timeout), then release the runtime."""
        if self.state is ModelState.READY:
            self._set_state(ModelState.UNLOADING)
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
        except TimeoutError:
            log.warning(
                "model %s: %d requests still running after %.0fs", self.name, self._inflight, drain_timeout_s
            )
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
        if self.runtime is not None:
            try:
                await self.runtime.unload()
            except Exception:
                log.exception("model %s failed to unload cleanly", self.name)
            self.runtime = None
        self._set_state(ModelState.UNAVAILABLE, "unloaded")


def _rows(request: RuntimeRequest) -> int:
    """Rows in a call: the first dimension of its first input (1 for a scalar or no input)."""
    first = next(iter(request.inputs.values()), None)
    return first.shape[0] if first is not None and first.ndim else 1
