"""InferenceGraph steps as gateway calls: a `serviceName` step goes through the routing core like any
client request (canary, A/B, retries, metrics); a `serviceUrl` step is a plain HTTP POST."""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from router.core import Router
from router.forward import Unreachable, forwarded_headers
from router.policies.graph import Caller, StepReply
from serving.errors import ServingError
from serving.spec.graph import InferenceStep

__all__ = ["step_caller"]

#: a serviceUrl step's deadline, in seconds (a graph's own `timeout` bounds the whole graph).
URL_TIMEOUT_S = 60.0


def step_caller(router: Router) -> Caller:
    async def call(step: InferenceStep, body: bytes, headers: Mapping[str, str]) -> StepReply:
        try:
            if step.service_name:
                reply = await router.call_service(step.service_name, body, headers)
            else:
                assert step.service_url is not None
                reply = await router.external.request(
                    "POST", step.service_url, body, forwarded_headers(headers), URL_TIMEOUT_S
                )
        except ServingError as exc:
            return StepReply(exc.http_status, orjson.dumps({"error": exc.message}))
        except (Unreachable, TimeoutError) as exc:
            return StepReply(503, orjson.dumps({"error": f"step {step.name or ''} unreachable: {exc}"}))
        return StepReply(reply.status, reply.body, reply.headers)

    return call
