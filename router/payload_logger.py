"""KServe's payload logger: requests and/or responses sent as CloudEvents (binary mode) to the
`logger.url` of an InferenceService component, in the background.

Like a shadow, logging never delays or fails the client's answer: a slow or failing sink only
costs dropped events, which are counted.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter

from router.forward import HttpForwarder, HttpReply

if TYPE_CHECKING:
    from router.routes import Backend, ServiceRoute

__all__ = ["LoggerSpec", "PayloadLogger"]

log = logging.getLogger(__name__)

#: events in flight at once; more are dropped rather than queued.
LIMIT = 256
#: a sink has this long (seconds) to take one event.
TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class LoggerSpec:
    url: str
    mode: str = "all"  # all | request | response


class PayloadLogger:
    def __init__(self, http: HttpForwarder, events: Counter) -> None:
        self._http = http
        self._events = events
        self._tasks: set[asyncio.Task[None]] = set()

    def log(
        self,
        spec: LoggerSpec,
        route: ServiceRoute,
        backend: Backend,
        request: bytes,
        request_headers: Mapping[str, str],
        reply: HttpReply,
    ) -> None:
        """Send the exchange (as `spec.mode` says) to the sink; returns at once."""
        service, component = route.service, backend.component
        event_id = request_headers.get("x-request-id") or str(uuid.uuid4())
        common = {
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": f"http://localhost/{service}-{component}",
            "ce-inferenceservicename": service,
            "ce-component": component,
            "ce-endpoint": backend.revision,
            "ce-namespace": "default",
        }
        if spec.mode in ("all", "request"):
            headers = common | {
                "ce-type": "org.kubeflow.serving.inference.request",
                "content-type": request_headers.get("content-type", "application/json"),
            }
            self._send(spec, service, request, headers)
        if spec.mode in ("all", "response"):
            headers = common | {
                "ce-type": "org.kubeflow.serving.inference.response",
                "content-type": reply.headers.get("content-type", "application/json"),
            }
            self._send(spec, service, reply.body, headers)

    def _send(self, spec: LoggerSpec, service: str, body: bytes, headers: dict[str, str]) -> None:
        if len(self._tasks) >= LIMIT:
            self._events.labels(service, "dropped").inc()
            return
        task = asyncio.create_task(self._post(spec.url, service, body, headers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, service: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            reply = await self._http.request("POST", url, body, headers, TIMEOUT_S)
            outcome = "ok" if reply.status < 300 else "rejected"
        except Exception as exc:  # the sink's trouble is never the client's
            log.debug("payload logger %s: %s", url, exc)
            outcome = "failed"
        self._events.labels(service, outcome).inc()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
