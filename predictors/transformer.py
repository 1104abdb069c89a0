"""The base class for an InferenceService's transformer: your pre- and post-processing around the
predictor, which it calls through the gateway (KServe's transformer calling its `predictor_host`).

    class Scale(Transformer):
        def preprocess(self, inputs, context):
            return {"input": inputs["input"] / 255.0}

        def postprocess(self, result, context):
            return {"label": result["output"].argmax(axis=1)}

and in the InferenceService::

    transformer:
      model:
        modelFormat: {name: python}
        storageUri: my_pkg.transforms:Scale

`preprocess` returns the predictor's inputs as a dict of arrays (V2 predictors) or a V1 body
(`{"instances": ...}`, for `protocolVersion: v1` predictors); `postprocess` gets the predictor's
outputs as a dict of arrays (V2) or its V1 response. The gateway passes the predictor's address and
protocol in SERVEGATE_PREDICTOR_URL and SERVEGATE_PREDICTOR_PROTOCOL.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import numpy as np
import orjson

from predictors.python_model import Context, PythonModel
from serving.auth.internal import CALLER_ENV, GATEWAY_CERT_ENV
from serving.auth.tls import pinned_context
from serving.errors import ErrorKind, ModelFailure, ServingError, kind_for_status
from serving.protocol.datatypes import datatype_of, from_json_data, to_json_data
from serving.protocol.rest import TRACE_HEADERS

__all__ = ["Transformer"]

#: tells the gateway that this call is the transformer's, for the predictor behind it.
COMPONENT_HEADER = "x-servegate-component"
#: headers of the client's request carried on to the predictor. Not its authorization: what reaches
#: a replica is the gateway's pool token, and the transformer calls back with its own token.
PROPAGATED = TRACE_HEADERS


class Transformer(PythonModel):
    """Override `preprocess` and/or `postprocess`; `predict` calls the predictor."""

    #: seconds one predictor call may take.
    timeout_s: float = 60.0

    async def load(self) -> None:
        self.predictor_url = str(
            self.options.get("predictor_url") or os.environ.get("SERVEGATE_PREDICTOR_URL", "")
        )
        self.protocol = str(
            self.options.get("predictor_protocol") or os.environ.get("SERVEGATE_PREDICTOR_PROTOCOL", "v2")
        )
        if not self.predictor_url:
            raise ModelFailure("a transformer needs its predictor's URL (SERVEGATE_PREDICTOR_URL)")
        token, cert = os.environ.get(CALLER_ENV), os.environ.get(GATEWAY_CERT_ENV)
        self._client = httpx.AsyncClient(
            base_url=self.predictor_url,
            timeout=self.timeout_s,
            trust_env=False,
            headers={"authorization": f"Bearer {token}"} if token else None,
            verify=pinned_context(cert) if cert else True,
        )

    async def predict(self, data: Any, context: Context) -> Any:
        headers = {k: v for k, v in context.headers.items() if k in PROPAGATED}
        headers[COMPONENT_HEADER] = "predictor"
        headers["content-type"] = "application/json"
        if self.protocol == "v1":
            path, body = (
                f"/v1/models/{self.name}:predict",
                orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
            )
        else:
            path, body = f"/v2/models/{self.name}/infer", _v2_request(data)
        try:
            response = await self._client.post(path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ModelFailure(f"the predictor could not be reached: {exc}") from exc
        answer = orjson.loads(response.content) if response.content else {}
        if response.status_code != 200:
            # The predictor's own error (bad input, not ready, ...) reaches the client as it was.
            message = answer.get("error", response.text) if isinstance(answer, dict) else response.text
            raise _error_for(response.status_code, f"predictor: {message}")
        return answer if self.protocol == "v1" else _v2_outputs(answer)

    async def unload(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            await client.aclose()


def _v2_request(data: Any) -> bytes:
    if not isinstance(data, dict):
        raise ModelFailure(
            "a transformer's preprocess must return a dict of input name -> array for a V2 predictor"
        )
    inputs = []
    for name, value in data.items():
        array = np.asarray(value)
        inputs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype_of(array),
                "data": to_json_data(array),
            }
        )
    return orjson.dumps({"inputs": inputs}, option=orjson.OPT_SERIALIZE_NUMPY)


def _v2_outputs(answer: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        out["name"]: from_json_data(
            out["data"], out["datatype"], tuple(out["shape"]), f"output {out['name']}"
        )
        for out in answer.get("outputs", [])
    }


def _error_for(status: int, message: str) -> ServingError:
    return ServingError(message, kind_for_status(status) or ErrorKind.MODEL_FAILURE)
