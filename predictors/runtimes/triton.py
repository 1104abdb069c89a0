"""Triton: forward each call to an external Triton Inference Server (or any V2 server) with tritonclient.

The model URI names the server and, optionally, the model there:

    grpc://triton.example:8001/resnet     gRPC (the remote model is "resnet")
    http://triton.example:8000            REST (the remote model has the served name)
    https://triton.example:8443/resnet    REST over TLS

Options: `model_version` (remote version, default: the server's choice) and `timeout_s`
(per call, default 60). The signature comes from the remote model's metadata.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import numpy as np
from tritonclient.utils import InferenceServerException

from predictors.runtime import Runtime, RuntimeRequest, Signature
from serving.errors import InferenceTimeout, InvalidInput, ModelFailure, ServerUnavailable, ServingError
from serving.protocol.datatypes import datatype_of
from serving.protocol.types import TensorSpec

__all__ = ["TritonRuntime"]

_SCHEMES = ("grpc", "http", "https")
# Remote statuses (HTTP codes or gRPC code names) that mean the caller's request was at fault.
_CLIENT_FAULTS = {"400", "StatusCode.INVALID_ARGUMENT"}
_UNAVAILABLE = {"503", "StatusCode.UNAVAILABLE"}
_TIMEOUTS = {"504", "StatusCode.DEADLINE_EXCEEDED"}


class TritonRuntime(Runtime):
    platform = "triton"
    needs_artifact = False

    client: Any

    async def load(self) -> Signature:
        parts = urlsplit(self.spec.uri)
        if parts.scheme not in _SCHEMES or not parts.netloc:
            raise ModelFailure(
                f"triton model URI must look like grpc://host:port[/model] or http(s)://host:port[/model], "
                f"got '{self.spec.uri}'"
            )
        self.remote_name = parts.path.strip("/") or self.spec.name
        self.remote_version = str(self.spec.options.get("model_version", ""))
        self.timeout_s = float(self.spec.options.get("timeout_s", 60.0))
        self.grpc = parts.scheme == "grpc"
        if self.grpc:
            from tritonclient.grpc import aio as grpc_aio

            self.protocol = grpc_aio
            self.client = grpc_aio.InferenceServerClient(parts.netloc)
        else:
            from tritonclient.http import aio as http_aio

            self.protocol = http_aio
            self.client = http_aio.InferenceServerClient(
                parts.netloc, ssl=parts.scheme == "https", conn_timeout=self.timeout_s
            )
        try:
            if not await self.client.is_model_ready(self.remote_name, self.remote_version):
                raise ModelFailure(f"model '{self.remote_name}' is not ready on {self._where()}")
            meta = await self._metadata()
        except InferenceServerException as exc:
            await self.unload()
            if str(exc.status()) in _UNAVAILABLE:  # how the gRPC client reports a refused connection
                raise ModelFailure(f"cannot reach {self._where()}: {exc.message()}") from None
            raise ModelFailure(
                f"cannot use model '{self.remote_name}' on {self._where()}: {exc.message()}"
            ) from None
        except Exception as exc:  # connection refused, DNS, TLS...
            await self.unload()
            raise ModelFailure(f"cannot reach {self._where()}: {type(exc).__name__}: {exc}") from None
        return Signature(
            inputs=tuple(_spec(t) for t in meta.get("inputs", [])),
            outputs=tuple(_spec(t) for t in meta.get("outputs", [])),
        )

    async def _metadata(self) -> dict[str, Any]:
        if self.grpc:
            return await self.client.get_model_metadata(self.remote_name, self.remote_version, as_json=True)
        return await self.client.get_model_metadata(self.remote_name, self.remote_version)

    def _where(self) -> str:
        return f"Triton at {self.spec.uri}"

    async def infer(self, request: RuntimeRequest) -> dict[str, np.ndarray]:
        inputs = []
        for name, array in request.inputs.items():
            tensor = self.protocol.InferInput(name, list(array.shape), datatype_of(array))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [self.protocol.InferRequestedOutput(name) for name in request.outputs or ()] or None
        kwargs: dict[str, Any] = {"client_timeout": self.timeout_s} if self.grpc else {}
        try:
            result = await self.client.infer(
                self.remote_name,
                inputs,
                model_version=self.remote_version,
                outputs=outputs,
                parameters=dict(request.parameters) or None,
                **kwargs,
            )
        except InferenceServerException as exc:
            raise _translate(exc, self._where()) from None
        response = result.get_response(as_json=True) if self.grpc else result.get_response()
        return {out["name"]: result.as_numpy(out["name"]) for out in response.get("outputs", [])}

    async def unload(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            await client.close()
            self.client = None


def _spec(tensor: dict[str, Any]) -> TensorSpec:
    # gRPC metadata rendered as JSON carries int64 dims as strings.
    return TensorSpec(tensor["name"], tensor["datatype"], tuple(int(d) for d in tensor.get("shape", [])))


def _translate(exc: InferenceServerException, where: str) -> ServingError:
    status = str(exc.status())
    message = f"{where}: {exc.message()}"
    if status in _CLIENT_FAULTS:
        return InvalidInput(message)
    if status in _UNAVAILABLE:
        return ServerUnavailable(message)
    if status in _TIMEOUTS:
        return InferenceTimeout(message)
    return ModelFailure(message)
