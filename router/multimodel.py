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
from router.forward import HttpForwarder
from router.policies.placement import Budget, evictions, pick_host
from router.routes import ModelRoute
from serving.errors import ModelNotReady

__all__ = ["Placer"]

log = logging.getLogger(__name__)


class Placer:
    def __init__(self, http: HttpForwarder) -> None:
        self._http = http
        #: replica id -> models it holds, least recently used first.
        self._held: dict[str, OrderedDict[str, None]] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[None]] = {}
        #: model -> its declared memory (TrainedModel `memory`), for the memory budget.
        self._sizes: dict[str, int] = {}

    def holders(self, model: str, pool: Pool) -> frozenset[str]:
        live = pool.endpoint_ids()
        for replica_id in list(self._held):
            if replica_id not in live:
                del self._held[replica_id]  # replaced or removed: whatever it held is gone
        return frozenset(r for r, models in self._held.items() if model in models)

    async def ensure(self, route: ModelRoute, pool: Pool, budget: Budget, timeout: float) -> frozenset[str]:
        """Replica ids holding `route`'s model, loading it onto one replica first if none does."""
        held = self.holders(route.name, pool)
        if held:
            for replica_id in held:
                self._held[replica_id].move_to_end(route.name)
            return held
        endpoints = pool.endpoint_map()
        if not endpoints:
            return frozenset()  # nothing ready: the request queues in the pool like any other
        host = pick_host([(e.id, len(self._held.get(e.id, ())), e.outstanding) for e in endpoints.values()])
        key = (host, route.name)
        pending = self._loading.get(key)
        if pending is None:
            load = self._load(route, endpoints[host].http_url, host, budget, timeout)
            pending = self._loading[key] = asyncio.ensure_future(load)
            pending.add_done_callback(lambda _f: self._loading.pop(key, None))
        await asyncio.shield(pending)
        return frozenset({host})

    async def _load(self, route: ModelRoute, url: str, host: str, budget: Budget, timeout: float) -> None:
        held = self._held.setdefault(host, OrderedDict())
        sizes = {route.name: route.memory_bytes} | self._sizes
        for victim in evictions(list(held), sizes, budget, route.name):
            held.pop(victim, None)
            unload = f"{url}/v2/repository/models/{victim}/unload"
            reply = await self._http.request("POST", unload, b"", {}, timeout)
            log.info("unloaded %s from %s (budget) -> %s", victim, host, reply.status)
        body = orjson.dumps({"parameters": {"storage_uri": route.storage_uri, "model_format": route.format}})
        load = f"{url}/v2/repository/models/{route.name}/load"
        reply = await self._http.request("POST", load, body, {"content-type": "application/json"}, timeout)
        if reply.status != 200:
            message = reply.body.decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                message = orjson.loads(reply.body).get("error", message)
            raise ModelNotReady(f"cannot load model '{route.name}' onto replica {host}: {message}")
        held[route.name] = None
        self._sizes[route.name] = route.memory_bytes
        log.info("loaded %s onto %s", route.name, host)
