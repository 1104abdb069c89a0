"""The protocol-agnostic data plane of a replica.

V1 REST, V2 REST and gRPC are thin adapters over this class: they decode into an `InferRequest`,
call `infer`, and encode the `InferResponse`; health, metadata and the repository extension are
answered here once for all of them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from predictors.metrics import ReplicaMetrics
from predictors.model import ServedModel
from predictors.repository import ModelRepository
from predictors.runtime import RuntimeRequest
from predictors.validation import check_inputs, check_outputs
from serving import __version__
from serving.errors import ErrorKind, InferenceTimeout, InvalidInput, ModelFailure, ServerUnavailable
from serving.protocol.datatypes import datatype_of
from serving.protocol.types import InferRequest, InferResponse, InferTensor, ModelMetadata

__all__ = ["DataPlane"]

EXTENSIONS = ("binary_tensor_data", "model_repository", "parameters", "schedule_policy")


class RepositoryControl(Protocol):
    """Where repository load/unload requests go: the local repository, or every worker's."""

    async def load(self, name: str) -> object: ...

    async def unload(self, name: str) -> None: ...


class DataPlane:
    def __init__(self, repository: ModelRepository, metrics: ReplicaMetrics, name: str = "servegate") -> None:
        self.repository = repository
        self.metrics = metrics
        self.name = name
        self.draining = False
        self.control: RepositoryControl = repository

    # -- health and metadata ---------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self.draining and self.repository.ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "version": __version__, "extensions": list(EXTENSIONS)}

    def model(self, name: str, version: str | None = None) -> ServedModel:
        return self.repository.get(name, version)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.repository.get(name, version).ready

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        return self.repository.get(name, version).metadata()

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Triton's model configuration (its `get_model_config`), for Triton tooling."""
        return self.repository.get(name, version).config()

    # -- inference -------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        if self.draining:
            raise ServerUnavailable("the server is shutting down")
        model = self.repository.get(request.model_name, request.model_version)
        model.ensure_ready()
        check_inputs(request.inputs, model.signature)
        outputs = check_outputs(request.outputs, model.signature)
        call = RuntimeRequest(request.input_arrays(), outputs, request.parameters, request.headers)
        inflight = self.metrics.inflight_child(model.name)
        inflight.inc()
        try:
            if request.deadline is None:
                results = await model.call(call)
            else:
                results = await self._call_before(model, call, request.deadline)
        finally:
            inflight.dec()
        return InferResponse(
            model_name=model.name,
            model_version=model.version,
            id=request.id,
            outputs=self._tensors(model, results, outputs),
        )

    async def _call_before(self, model: ServedModel, call: RuntimeRequest, deadline: float) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                return await model.call(call)
        except TimeoutError:
            raise InferenceTimeout(
                f"model '{model.name}' did not answer within the request's timeout"
            ) from None

    @staticmethod
    def _tensors(
        model: ServedModel, results: dict[str, Any], requested: list[str] | None
    ) -> list[InferTensor]:
        if requested is None:
            declared = [spec.name for spec in model.signature.outputs]
            order = [n for n in declared if n in results] + [n for n in results if n not in declared]
        else:
            missing = [name for name in requested if name not in results]
            if missing:
                raise ModelFailure(f"model '{model.name}' did not return output {', '.join(missing)}")
            order = requested
        tensors = []
        for name in order:
            array = results[name]
            tensors.append(InferTensor(name, datatype_of(array), tuple(array.shape), array))
        return tensors

    def record(self, model_name: str, protocol: str, kind: ErrorKind | None, started: float) -> None:
        """Count one finished request; `started` is a time.perf_counter() reading."""
        # Only served models get a label of their own, so arbitrary names cannot blow up cardinality.
        label = model_name if model_name in self.repository.names else ""
        self.metrics.observe_request(label, protocol, kind, time.perf_counter() - started)

    # -- repository extension --------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        index = self.repository.index()
        return [entry for entry in index if entry.get("state") == "READY"] if ready_only else index

    async def load(self, name: str, uri: str | None = None, fmt: str | None = None) -> None:
        """Load (or reload) `name`; with `uri`, from that storage URI (how a gateway places TrainedModels)."""
        if uri is not None:
            if self.control is not self.repository:
                raise InvalidInput(
                    "loading a model from a storage URI needs a single-worker replica (--workers 1)"
                )
            await self.repository.register(name, uri, fmt)
        await self.control.load(name)

    async def unload(self, name: str) -> None:
        await self.control.unload(name)
