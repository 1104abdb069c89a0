"""Leader election through a Kubernetes Lease (`coordination.k8s.io/v1`), as client-go's leader
election does it: the holder writes `renewTime` every `duration / 3` seconds; another candidate takes
the Lease once `renewTime + leaseDurationSeconds` has passed, or at once when the holder released it
(an empty `holderIdentity`). Two candidates never both win: every write carries the resourceVersion
it read (a create fails when the Lease exists), and the loser's write gets 409 Conflict.

`decide` and `released` are pure (the Lease's spec, now, me -> what to write); `LeaseElector` applies
them in the campaign it shares with the state database's lease (`serving.election.Elector`). Times
are the candidates' wall clocks, as there: they must roughly agree (a leader steps down a renewal
interval before its lease ends).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from serving.election import Elector
from serving.operator.kube import Conflict, OperatorApi

__all__ = ["LEASE_NAME", "LeaseDecision", "LeaseElector", "decide", "micro_time", "parse_time", "released"]

log = logging.getLogger(__name__)

LEASE_NAME = "servegate-operator"


def micro_time(seconds: float) -> str:
    """Unix seconds as a Kubernetes MicroTime (`2026-12-04T12:23:13.123456Z`)."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> float | None:
    """A Kubernetes (Micro)Time as Unix seconds; None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class LeaseDecision:
    """What a candidate does with the Lease it read."""

    #: the Lease's spec to write (None: leave it, another holder's lease is live).
    spec: dict[str, Any] | None
    #: who holds the lease once this is done (None: nobody), and until when (Unix seconds).
    holder: str | None
    expires: float


def decide(lease: Mapping[str, Any] | None, me: str, now: float, duration_s: int) -> LeaseDecision:
    """`me`'s move at `now`, given the Lease's spec (None: there is no Lease): renew its own, take a
    free or expired one, else wait until it expires."""
    spec = lease or {}
    holder = spec.get("holderIdentity") or None
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime")) or 0.0
    expires = renewed + float(spec.get("leaseDurationSeconds") or 0)
    if holder is not None and holder != me and now < expires:
        return LeaseDecision(None, holder, expires)
    stamp = micro_time(now)
    new = {"holderIdentity": me, "leaseDurationSeconds": duration_s, "renewTime": stamp}
    transitions = int(spec.get("leaseTransitions") or 0)
    if holder == me:
        new |= {"acquireTime": spec.get("acquireTime") or stamp, "leaseTransitions": transitions}
    else:
        new |= {"acquireTime": stamp, "leaseTransitions": transitions + (lease is not None)}
    return LeaseDecision(new, me, now + duration_s)


def released(lease: Mapping[str, Any] | None, me: str, now: float) -> dict[str, Any] | None:
    """The spec that gives `me`'s lease up (as client-go does: no holder, a one-second lease), so a
    successor takes it at its next attempt; None when `me` does not hold it."""
    if lease is None or lease.get("holderIdentity") != me:
        return None
    stamp = micro_time(now)
    return {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": stamp,
        "renewTime": stamp,
        "leaseTransitions": int(lease.get("leaseTransitions") or 0),
    }


class LeaseElector(Elector):
    """Campaigns for the Lease `name` in `namespace` (see `Elector`): renews it every
    `duration_s / 3` seconds while leading and tries to take it every `retry_s` seconds while not.
    A write that loses a race (409) reads as another candidate holding the Lease."""

    def __init__(
        self,
        api: OperatorApi,
        namespace: str,
        name: str = LEASE_NAME,
        *,
        holder: str | None = None,
        duration_s: int = 15,
        retry_s: float = 2.0,
        on_started_leading: Callable[[], Awaitable[None]] | None = None,
        on_stopped_leading: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if duration_s < 3:
            raise ValueError(f"the lease's duration_s must be at least 3, not {duration_s}")
        super().__init__(
            f"lease {namespace}/{name}",
            holder=holder,
            ttl_s=duration_s,
            retry_s=retry_s,
            on_started_leading=on_started_leading,
            on_stopped_leading=on_stopped_leading,
            clock=clock,
            sleep=sleep,
        )
        self.api = api
        self.namespace = namespace
        self.name = name
        self.duration_s = duration_s

    def _attempt(self, now: float) -> tuple[str | None, float]:
        lease = self.api.read_lease(self.namespace, self.name)
        decision = decide(lease and lease.get("spec"), self.holder, now, self.duration_s)
        if decision.spec is not None:
            version = lease["metadata"]["resourceVersion"] if lease else None
            try:
                self.api.write_lease(self.namespace, self.name, decision.spec, version)
            except Conflict:
                return "another candidate", 0.0
        return decision.holder, decision.expires

    def _release(self, now: float) -> None:
        lease = self.api.read_lease(self.namespace, self.name)
        spec = released(lease and lease.get("spec"), self.holder, now)
        if lease is not None and spec is not None:
            try:
                self.api.write_lease(self.namespace, self.name, spec, lease["metadata"]["resourceVersion"])
            except Conflict:
                return  # another candidate wrote it meanwhile: not ours to give up any more
            log.info("%s: released", self.what)
