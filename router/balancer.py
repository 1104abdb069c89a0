"""Per-revision replica choice: least outstanding requests by power of two choices, a concurrency
limit per replica (`containerConcurrency`), and a bounded FIFO queue in front of a full pool.

A request that finds every replica at its limit, or no ready replica at all (one restarting, a
pool scaling up), waits in the queue until a slot frees, an endpoint appears, or its deadline
passes. A full queue answers at once: queueing more would only turn overload into timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from serving.errors import InferenceTimeout, ServerUnavailable

__all__ = ["Endpoint", "Pool", "choose"]


@dataclass(eq=False, slots=True)
class Endpoint:
    """One ready replica as the router uses it."""

    id: str
    http_url: str
    grpc_target: str | None = None
    #: requests sent to it and not yet answered.
    outstanding: int = 0
    #: set when the engine drops it: it keeps its in-flight requests but gets no new ones.
    removed: bool = field(default=False)
    #: event-loop time until which it gets no new requests (it could not be reached).
    quarantined_until: float = 0.0


def choose(candidates: list[Endpoint], rng: random.Random) -> Endpoint:
    """Power of two choices: of two replicas drawn at random, the one with fewer outstanding requests.

    Nearly as good as scanning for the global minimum, and it does not herd every request onto the
    same replica between updates of the counts.
    """
    if len(candidates) == 1:
        return candidates[0]
    a, b = rng.sample(candidates, 2)
    return a if a.outstanding <= b.outstanding else b


class Pool:
    """The ready replicas of one revision."""

    def __init__(
        self,
        revision: str,
        container_concurrency: int = 0,
        queue_limit: int = 1000,
        rng: random.Random | None = None,
        on_starved: Callable[[str], None] | None = None,
        activation_timeout_s: float = 60.0,
        token: str | None = None,
    ) -> None:
        self.revision = revision
        #: what every call to this pool's replicas carries: its internal token (none: replicas are open).
        self.auth_headers: dict[str, str] = {"authorization": f"Bearer {token}"} if token else {}
        self.container_concurrency = container_concurrency
        self.queue_limit = queue_limit
        #: told (with the revision) when a request waits and no replica is ready: scale from zero.
        self.on_starved = on_starved
        #: how long a request waits for the first replica of a pool that has none, in seconds.
        self.activation_timeout_s = activation_timeout_s
        self._endpoints: dict[str, Endpoint] = {}
        self._waiters: deque[_Waiter] = deque()
        self._rng = rng or random.Random()

    # -- membership (from the engine, through the controller) -------------------------------------

    def update(self, ready: Iterable[tuple[str, str, str | None]]) -> None:
        """Set the ready replicas as (id, http_url, grpc_target); counts of those that stay are kept."""
        fresh: dict[str, Endpoint] = {}
        for replica_id, http_url, grpc_target in ready:
            endpoint = self._endpoints.get(replica_id)
            if endpoint is None or endpoint.http_url != http_url:
                endpoint = Endpoint(replica_id, http_url, grpc_target)
            fresh[replica_id] = endpoint
        for replica_id, endpoint in self._endpoints.items():
            if replica_id not in fresh:
                endpoint.removed = True
        self._endpoints = fresh
        self._wake()

    def quarantine(self, endpoint: Endpoint, seconds: float = 2.0) -> None:
        """Keep new requests off a replica that could not be reached, for a while.

        The engine notices a dead replica within a health interval and replaces it; until then (or
        if the failure was a blip) this stops every request from paying for a refused connection.
        """
        loop = asyncio.get_running_loop()
        endpoint.quarantined_until = loop.time() + seconds
        loop.call_later(seconds, self._wake)

    def endpoint_ids(self) -> frozenset[str]:
        return frozenset(self._endpoints)

    def endpoint_map(self) -> dict[str, Endpoint]:
        return dict(self._endpoints)

    @property
    def size(self) -> int:
        return len(self._endpoints)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def outstanding(self) -> int:
        return sum(e.outstanding for e in self._endpoints.values())

    async def wait_idle(self, quiet_s: float, limit_s: float) -> None:
        """Until nothing is queued or outstanding here for `quiet_s` seconds (at most `limit_s`).

        Retiring a revision waits for this after the routing table stopped naming it: requests
        that picked it just before keep their replicas until they are answered.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + limit_s
        quiet_since = loop.time()
        while loop.time() < give_up:
            if self._waiters or any(e.outstanding for e in self._endpoints.values()):
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= quiet_s:
                return
            await asyncio.sleep(0.05)

    # -- per request ----------------------------------------------------------------------------

    def _candidates(self, exclude: frozenset[str], only: frozenset[str] | None = None) -> list[Endpoint]:
        limit = self.container_concurrency
        now = asyncio.get_running_loop().time()
        return [
            e
            for e in self._endpoints.values()
            if e.id not in exclude
            and (only is None or e.id in only)
            and (limit <= 0 or e.outstanding < limit)
            and e.quarantined_until <= now
        ]

    async def acquire(
        self, deadline: float, exclude: frozenset[str] = frozenset(), only: frozenset[str] | None = None
    ) -> Endpoint:
        """A replica to send one request to (its outstanding count taken); release it when answered.

        `exclude`: replicas already tried. `only`: the replicas that may take it (those holding a
        multi-model request's model), None for any.

        Waits in the queue while no replica has room; raises ServerUnavailable when the queue is
        full and InferenceTimeout when `deadline` (event-loop time) passes first. The queue is first
        in, first out: a freed slot is handed to the oldest waiter that can use it, never to a
        request arriving in the meantime.
        """
        if not self._waiters:
            candidates = self._candidates(exclude, only)
            if candidates:
                endpoint = choose(candidates, self._rng)
                endpoint.outstanding += 1
                return endpoint
        if len(self._waiters) >= self.queue_limit:
            raise ServerUnavailable(
                f"revision {self.revision} is overloaded: {len(self._waiters)} requests already queued"
            )
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), exclude, only)
        self._waiters.append(waiter)
        cold = not self._endpoints
        if cold and self.on_starved is not None:
            self.on_starved(self.revision)
        activation = loop.time() + self.activation_timeout_s if cold else deadline
        try:
            async with asyncio.timeout_at(min(deadline, activation)):
                return await waiter.future
        except TimeoutError:
            self._abandon(waiter)
            if activation < deadline and not self._endpoints:
                raise ServerUnavailable(
                    f"no replica of revision {self.revision} became ready within "
                    f"{self.activation_timeout_s:g}s (scaling from zero)"
                ) from None
            raise InferenceTimeout(
                f"timed out waiting for a replica of revision {self.revision} ({self.size} ready, all busy)"
                if self.size
                else f"timed out waiting for a ready replica of revision {self.revision}"
            ) from None
        except BaseException:  # cancelled: the client went away
            self._abandon(waiter)
            raise

    def _abandon(self, waiter: _Waiter) -> None:
        if waiter.future.done() and not waiter.future.cancelled():
            self.release(waiter.future.result())  # a slot was handed over just as it gave up
            return
        waiter.future.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def release(self, endpoint: Endpoint) -> None:
        endpoint.outstanding -= 1
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        """Hand free slots to waiters, oldest first (a waiter nothing fits stays queued in place)."""
        if not self._endpoints:
            return
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            candidates = self._candidates(waiter.exclude, waiter.only)
            if not candidates:
                if waiter.only is None and not waiter.exclude:
                    return  # no room anywhere: nobody behind it can be served either
                continue
            endpoint = choose(candidates, self._rng)
            endpoint.outstanding += 1
            self._waiters.remove(waiter)
            waiter.future.set_result(endpoint)


@dataclass(eq=False, slots=True)
class _Waiter:
    future: asyncio.Future[Endpoint]
    exclude: frozenset[str]
    only: frozenset[str] | None
