"""The routing core, shared by every protocol front: pick a revision for a model name (A/B variant,
canary split, transformer first), send the request to one of its replicas (queueing, retrying an
unreachable replica on another), mirror a share to a shadow, and record the outcome.

The fronts only parse what they must (the model name from the path or the message) and hand the
payload over as bytes; nothing here decodes a tensor.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from router.agreement import NotComparable, answers_agree, outputs_of
from router.balancer import Pool
from router.forward import (
    AddressCheck,
    HttpForwarder,
    HttpReply,
    Unreachable,
    forwarded_headers,
)
from router.metrics import GatewayMetrics, status_for_http
from router.multimodel import Placer
from router.payload_logger import PayloadLogger
from router.policies.traffic import pick_weighted, shadow_has_room, sticky_point, take_shadow
from router.replica_client import ReplicaClient
from router.routes import Backend, RoutingTable, ServiceRoute, Split
from router.samples import RevisionSamples
from serving.errors import InferenceTimeout, ModelNotFound, ServerUnavailable, ServingError
from serving.protocol.grpc_http import GrpcError

__all__ = ["COMPONENT_HEADER", "REVISION_HEADER", "VARIANT_HEADER", "Decision", "Router"]

log = logging.getLogger(__name__)

#: set by a transformer calling its predictor back through the gateway.
COMPONENT_HEADER = "x-servegate-component"
#: names the A/B variant that answered.
VARIANT_HEADER = "x-servegate-variant"
#: names the revision that answered (canary splits are visible to clients and tests).
REVISION_HEADER = "x-servegate-revision"
#: attempts at reaching a replica before giving up on a request (it also stops at its deadline).
MAX_ATTEMPTS = 5
#: mirrored requests in flight at once, over every shadow; more are dropped (and counted). Each
#: shadow takes copies only while it has room (`shadow_has_room`).
SHADOW_LIMIT = 64


@dataclass(frozen=True, slots=True)
class Decision:
    route: ServiceRoute
    backend: Backend
    variant: str
    shadow: Backend | None = None
    #: a cookie to set on the answer (sticky assignment by cookie, first visit).
    set_cookie: str | None = None

    def response_headers(self) -> dict[str, str]:
        headers = {REVISION_HEADER: self.backend.revision}
        if self.variant:
            headers[VARIANT_HEADER] = self.variant
        if self.set_cookie:
            headers["set-cookie"] = self.set_cookie
        return headers


Send = Callable[[Backend, float], Awaitable[HttpReply]]


class Router:
    def __init__(
        self,
        metrics: GatewayMetrics,
        rng: random.Random | None = None,
        check_urls: AddressCheck | None = None,
    ) -> None:
        self.metrics = metrics
        self.table = RoutingTable()
        #: to replicas; `external` to the URLs manifests name (graph steps, payload loggers), whose
        #: hosts go through `check_urls` at every connection.
        self.http = ReplicaClient()
        self.external = HttpForwarder(check_urls)
        self._rng = rng or random.Random()
        self._shadows: set[asyncio.Task[None]] = set()
        #: mirrored copies in flight per shadow revision (a copy not yet sent is not outstanding yet).
        self._mirrored: collections.Counter[str] = collections.Counter()
        self.placer = Placer(self.http)
        #: what canary analysis reads: revisions' outcomes and mirrored answers' agreement.
        self.samples = RevisionSamples()
        self.payload_logger = PayloadLogger(self.external, metrics.logged_events)

    def set_table(self, table: RoutingTable) -> None:
        self.table = table

    async def close(self) -> None:
        for task in list(self._shadows):
            task.cancel()
        await asyncio.gather(*self._shadows, return_exceptions=True)
        await self.payload_logger.close()
        await self.http.close()
        await self.external.close()

    # -- deciding ---------------------------------------------------------------------------------

    def decide(
        self, model: str, headers: Mapping[str, str], cookies: Mapping[str, str], internal: bool = False
    ) -> Decision:
        """Which revision serves this request (and which shadow sees a copy); raises 404/503 errors.

        `internal`: a service's own transformer calling its predictor (no experiment, no shadow); the
        front decides whether a request may be that (`internal_call`)."""
        route = self.table.services.get(model)
        if route is None:
            return self._decide_trained_model(model)
        split, variant, cookie = self._component(route, internal), "", None
        if route.experiment is not None and not internal:
            split, variant, cookie = self._variant(route, headers, cookies)
        backend = split.pick(self._rng.random())
        if backend is None:
            raise ServerUnavailable(f"InferenceService '{route.service}' has no ready revision")
        shadow = None
        if (
            route.shadow is not None
            and not internal
            and take_shadow(route.shadow.percent, self._rng.random())
        ):
            shadow_split = route.shadow.split or self._service_split(route.shadow.service)
            shadow = shadow_split.pick(self._rng.random()) if shadow_split else None
        return Decision(route, backend, variant, shadow, cookie)

    def _decide_trained_model(self, model: str) -> Decision:
        placed = self.table.models.get(model)
        if placed is None:
            raise ModelNotFound(f"model '{model}' is not served by this gateway")
        host = self.table.services.get(placed.service)
        backend = host.predictor.pick(self._rng.random()) if host else None
        if host is None or backend is None:
            raise ServerUnavailable(
                f"InferenceService '{placed.service}' hosting model '{model}' is not ready"
            )
        return Decision(host, Backend(backend.revision, model, backend.pool, placed, backend.component), "")

    @staticmethod
    def _component(route: ServiceRoute, internal: bool) -> Split:
        return route.transformer if route.transformer is not None and not internal else route.predictor

    def _service_split(self, service: str | None) -> Split | None:
        other = self.table.services.get(service or "")
        return self._component(other, False) if other else None

    def _variant(
        self, route: ServiceRoute, headers: Mapping[str, str], cookies: Mapping[str, str]
    ) -> tuple[Split, str, str | None]:
        experiment = route.experiment
        assert experiment is not None
        key, cookie = None, None
        if experiment.header:
            key = headers.get(experiment.header)
        elif experiment.cookie:
            key = cookies.get(experiment.cookie)
            if not key:
                key = uuid.uuid4().hex
                cookie = f"{experiment.cookie}={key}; Path=/; Max-Age=31536000; SameSite=Lax"
        point = sticky_point(key, route.service) if key else self._rng.random()
        variant = pick_weighted([(v, v.weight) for v in experiment.variants], point)
        if variant is None:
            raise ServerUnavailable(
                f"InferenceService '{route.service}': every experiment variant has weight 0"
            )
        split = variant.split or self._service_split(variant.service)
        if split is None:
            raise ServerUnavailable(
                f"variant '{variant.name}' of '{route.service}' routes to InferenceService "
                f"'{variant.service}', which does not exist"
            )
        return split, variant.name, cookie

    # -- sending ----------------------------------------------------------------------------------

    async def send(self, decision: Decision, send: Send, protocol: str) -> HttpReply:
        """Send through `send(backend, deadline)` with metrics, and mirror to the shadow if chosen."""
        route, backend = decision.route, decision.backend
        started = time.perf_counter()
        inflight = self.metrics.inflight_child(route.service)
        inflight.inc()
        status = "ok"
        reply = None
        try:
            reply = await send(backend, asyncio.get_running_loop().time() + route.timeout_s)
            status = status_for_http(reply.status)
            return reply
        except Exception as exc:
            status = _status_of(exc)
            raise
        finally:
            inflight.dec()
            elapsed = time.perf_counter() - started
            self.metrics.count_child(
                route.service, backend.revision, decision.variant, protocol, status
            ).inc()
            self.metrics.latency_child(route.service, backend.revision, decision.variant).observe(elapsed)
            self.samples.record(backend.revision, status == "ok", elapsed)
            if decision.shadow is not None:
                answered = reply if status == "ok" else None
                self._mirror(route, decision.shadow, send, answered, protocol)

    def _mirror(
        self, route: ServiceRoute, shadow: Backend, send: Send, answered: HttpReply | None, protocol: str
    ) -> None:
        pool, revision = shadow.pool, shadow.revision
        waiting = max(pool.outstanding + pool.queued, self._mirrored[revision])
        if len(self._shadows) >= SHADOW_LIMIT or not shadow_has_room(pool.size, waiting):
            self.metrics.shadow_requests.labels(route.service, revision, "dropped").inc()
            return
        task = asyncio.create_task(self._shadow(route, shadow, send, answered, protocol))
        self._shadows.add(task)
        self._mirrored[revision] += 1
        task.add_done_callback(lambda done: self._mirror_done(done, revision))

    def _mirror_done(self, task: asyncio.Task[None], revision: str) -> None:
        self._shadows.discard(task)
        self._mirrored[revision] -= 1
        if self._mirrored[revision] <= 0:
            del self._mirrored[revision]

    async def _shadow(
        self, route: ServiceRoute, shadow: Backend, send: Send, answered: HttpReply | None, protocol: str
    ) -> None:
        """Send the copy; count its outcome, and compare its answer with the client's when a rollout
        judges the shadow's agreement."""
        status, reply = "ok", None
        started = time.perf_counter()
        try:
            reply = await send(shadow, asyncio.get_running_loop().time() + route.timeout_s)
            status = status_for_http(reply.status)
        except Exception as exc:  # a shadow's failure is only ever counted
            status = _status_of(exc)
        self.metrics.shadow_requests.labels(route.service, shadow.revision, status).inc()
        self.samples.record(shadow.revision, status == "ok", time.perf_counter() - started)
        window = self.samples.compares(shadow.revision)
        if window is None or answered is None or reply is None or status != "ok":
            return
        try:
            agreed, compared = answers_agree(
                outputs_of(answered, protocol), outputs_of(reply, protocol), window.tolerance
            )
        except (NotComparable, ServingError, GrpcError, ValueError) as exc:
            self.samples.record_problem(shadow.revision, str(exc))
            return
        self.samples.record_agreement(shadow.revision, agreed, compared)

    async def deliver(
        self,
        backend: Backend,
        deadline: float,
        attempt: Callable[[str, str | None, float], Awaitable[HttpReply]],
    ) -> HttpReply:
        """Acquire a replica of `backend` and run `attempt(http_url, grpc_target, timeout)` on it,
        retrying on another replica when it cannot be reached, until MAX_ATTEMPTS or the deadline."""
        pool: Pool = backend.pool
        loop = asyncio.get_running_loop()
        tried: set[str] = set()
        last = ""
        for _ in range(MAX_ATTEMPTS):
            only = await self._holders(backend, deadline)
            endpoint = await pool.acquire(deadline, frozenset(tried), only)
            try:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                reply = await attempt(endpoint.http_url, endpoint.grpc_target, remaining)
                if not self._evicted(backend, endpoint.id, reply):
                    return reply
                last = f"model {backend.model} was unloaded from replica {endpoint.id} as the request came"
                self.metrics.retries.labels(backend.revision).inc()
            except Unreachable as exc:
                last = str(exc)
                log.warning("replica %s of %s unreachable: %s", endpoint.id, backend.revision, exc)
                pool.quarantine(endpoint)
                tried.add(endpoint.id)
                self.metrics.retries.labels(backend.revision).inc()
                if len(tried) >= pool.size:
                    # Every known replica failed: wait for the engine's replacement rather than spin.
                    tried.clear()
            except TimeoutError:
                raise InferenceTimeout(
                    f"revision {backend.revision} did not answer within the service's timeout"
                ) from None
            finally:
                pool.release(endpoint)
        raise ServerUnavailable(f"no replica of revision {backend.revision} could be reached: {last}")

    def _evicted(self, backend: Backend, replica: str, reply: HttpReply) -> bool:
        """Whether a TrainedModel's replica turned the request away because the placer unloaded the
        model from it meanwhile, to make room for another (503 while unloading, 404 once gone): then
        the model is placed again."""
        return (
            backend.placed is not None
            and reply.status in (404, 503)
            and replica not in self.placer.holders(backend.placed, backend.pool)
        )

    async def _holders(self, backend: Backend, deadline: float) -> frozenset[str] | None:
        """For a TrainedModel, the replicas holding it (loading it first); None for a plain model."""
        if backend.placed is None:
            return None
        loop = asyncio.get_running_loop()
        while True:
            held = await self.placer.ensure(
                backend.placed, backend.pool, backend.placed.budget, deadline - loop.time()
            )
            if held:
                return held
            # No replica is ready yet: wait for one like any request would, then place the model.
            backend.pool.release(await backend.pool.acquire(deadline))

    # -- HTTP convenience -------------------------------------------------------------------------

    async def call_service(self, service: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        """Infer on an InferenceService in its own protocol (V1 predict or V2 infer), as a client would."""
        decision = self.decide(service, headers, {})
        v1 = decision.route.protocol == "v1"
        prefix, suffix = ("/v1/models/", ":predict") if v1 else ("/v2/models/", "/infer")
        send = self.http_sender("POST", prefix, suffix, body, {**headers, "content-type": "application/json"})
        return await self.send(decision, send, "v1" if v1 else "v2")

    def http_sender(
        self, method: str, prefix: str, suffix: str, body: bytes, headers: Mapping[str, str]
    ) -> Send:
        """A `Send` that forwards one REST request, with the model name of the chosen backend."""
        forward = forwarded_headers(headers)

        async def send(backend: Backend, deadline: float) -> HttpReply:
            path = f"{prefix}{backend.model}{suffix}"
            credentials = backend.pool.auth_headers
            headers = {**forward, **credentials} if credentials else forward

            async def attempt(http_url: str, _grpc: str | None, timeout: float) -> HttpReply:
                return await self.http.request(method, http_url + path, body, headers, timeout)

            return await self.deliver(backend, deadline, attempt)

        return send


def _status_of(exc: Exception) -> str:
    """A failed request's status label: its error kind (`timeout`, `unavailable`, ...)."""
    return getattr(getattr(exc, "kind", None), "name", "model_failure").lower()
