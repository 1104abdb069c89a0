"""Multi-model serving: TrainedModels loaded on demand onto an InferenceService's replicas through the
repository API, least recently used ones unloaded under the service's budget, and requests sent only
to replicas that hold their model.

What each replica holds is tracked here, from the loads and unloads this gateway made; a replica
that is replaced starts empty, and its models are loaded again on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

import orjson

from router.balancer import Pool
from router.forward import Requester
from router.policies.placement import Budget, evictions, pick_host
from router.routes import ModelRoute
from serving.errors import ModelNotReady

__all__ = ["Placer"]

log = logging.getLogger(__name__)


class Placer:
    def __init__(self, http: Requester) -> None:
        self._http = http
        #: replica id -> {model: the storage URI it was loaded from}, least recently used first.
        self._held: dict[str, OrderedDict[str, str]] = {}
        #: replica id -> its base URL (to unload from it later).
        self._urls: dict[str, str] = {}
        #: model -> its load in progress (one at a time per model, whatever the replica).
        self._loading: dict[str, asyncio.Future[str]] = {}
        #: loads and unloads on one replica happen one at a time, so each sees the others' effect.
        self._locks: dict[str, asyncio.Lock] = {}
        #: model -> its declared memory (TrainedModel `memory`), for the memory budget.
        self._sizes: dict[str, int] = {}
        #: replica id -> the pool it belongs to.
        self._pool_of: dict[str, Pool] = {}

    def holders(self, route: ModelRoute, pool: Pool) -> frozenset[str]:
        """Replicas of `pool` holding `route`'s model, loaded from its current storage URI."""
        live = pool.endpoint_ids()
        for replica_id in [r for r, p in self._pool_of.items() if p is pool and r not in live]:
            self._forget_replica(replica_id)  # replaced or removed: whatever it held is gone
        return frozenset(r for r in live if self._held.get(r, {}).get(route.name) == route.storage_uri)

    def _forget_replica(self, replica_id: str) -> None:
        self._held.pop(replica_id, None)
        self._urls.pop(replica_id, None)
        self._pool_of.pop(replica_id, None)
        self._locks.pop(replica_id, None)

    async def ensure(self, route: ModelRoute, pool: Pool, budget: Budget, timeout: float) -> frozenset[str]:
        """Replica ids holding `route`'s model, loading it onto one replica first if none does."""
        held = self.holders(route, pool)
        if held:
            for replica_id in held:
                self._held[replica_id].move_to_end(route.name)
            return held
        pending = self._loading.get(route.name)
        if pending is None:
            endpoints = pool.endpoint_map()
            if not endpoints:
                return frozenset()  # nothing ready: the request queues in the pool like any other
            counts = [(e.id, len(self._held.get(e.id, ())), e.outstanding) for e in endpoints.values()]
            host = pick_host(counts)
            self._pool_of[host] = pool
            pending = asyncio.ensure_future(
                self._place(route, endpoints[host].http_url, host, budget, timeout)
            )
            self._loading[route.name] = pending
            pending.add_done_callback(lambda _f: self._loading.pop(route.name, None))
        return frozenset({await asyncio.shield(pending)})

    async def _place(self, route: ModelRoute, url: str, host: str, budget: Budget, timeout: float) -> str:
        await self._load(route, url, host, budget, timeout)
        # Copies of an older version of the model (a changed storage URI) elsewhere are stale now.
        for other in [h for h, models in self._held.items() if h != host and route.name in models]:
            async with self._locks.setdefault(other, asyncio.Lock()):
                await self._unload(other, route.name)
        return host

    async def _load(self, route: ModelRoute, url: str, host: str, budget: Budget, timeout: float) -> None:
        async with self._locks.setdefault(host, asyncio.Lock()):
            self._urls[host] = url
            held = self._held.setdefault(host, OrderedDict())
            sizes = self._sizes | {route.name: route.memory_bytes}
            for victim in evictions(list(held), sizes, budget, route.name):
                await self._unload(host, victim)
            body = orjson.dumps(
                {"parameters": {"storage_uri": route.storage_uri, "model_format": route.format}}
            )
            load = f"{url}/v2/repository/models/{route.name}/load"
            headers = {"content-type": "application/json", **self._credentials(host)}
            reply = await self._http.request("POST", load, body, headers, timeout)
            if reply.status != 200:
                message = reply.body.decode(errors="replace")
                with contextlib.suppress(ValueError, AttributeError):
                    message = orjson.loads(reply.body).get("error", message)
                raise ModelNotReady(f"cannot load model '{route.name}' onto replica {host}: {message}")
            held[route.name] = route.storage_uri
            held.move_to_end(route.name)
            self._sizes[route.name] = route.memory_bytes
            log.info("loaded %s onto %s", route.name, host)

    async def _unload(self, host: str, model: str) -> None:
        self._held.get(host, OrderedDict()).pop(model, None)
        url = self._urls.get(host)
        if url is None:
            return
        try:
            reply = await self._http.request(
                "POST", f"{url}/v2/repository/models/{model}/unload", b"", self._credentials(host), 30.0
            )
            log.info("unloaded %s from %s (%s)", model, host, reply.status)
        except Exception as exc:  # the replica is gone or busy: it no longer counts as holding it
            log.warning("unloading %s from %s failed: %s", model, host, exc)

    def _credentials(self, host: str) -> dict[str, str]:
        pool = self._pool_of.get(host)
        return pool.auth_headers if pool is not None else {}

    async def retire(self, model: str) -> None:
        """Unload a deleted TrainedModel from every replica holding it."""
        for host in [h for h, models in self._held.items() if model in models]:
            async with self._locks.setdefault(host, asyncio.Lock()):
                await self._unload(host, model)
        self._sizes.pop(model, None)
