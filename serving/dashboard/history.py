"""The last hour of each service's traffic, kept in the gateway so the dashboard draws time charts
without a Prometheus.

Every `step_s` seconds `MetricHistory.sample` reads the gateway's own counters (requests by
outcome, the latency histogram) and the pools' replica counts into a ring per revision and variant;
`series` turns two consecutive samples into a rate, an error share and latency quantiles, the way
PromQL's `rate` and `histogram_quantile` would. Reading a few counters every few seconds costs the
data plane nothing it would notice; the pure arithmetic is in `window_figures` and `quantile`.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

__all__ = ["MetricHistory", "Sample", "quantile", "window_figures"]

#: (service, revision, variant): one line of a service's charts.
Key = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative counts of one (service, revision, variant) at time `t`."""

    t: float
    requests: float
    errors: float
    #: cumulative bucket counts, in the order of `MetricHistory.bounds` (the last is +Inf).
    buckets: tuple[float, ...]


def quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The `q` quantile (0..1) of observations counted in cumulative `counts` over upper `bounds`
    (the last +Inf), interpolated linearly inside a bucket as `histogram_quantile` does; None when
    nothing was observed. A quantile in the +Inf bucket reads as the last finite bound."""
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            inside = count - lower_count
            share = (rank - lower_count) / inside if inside > 0 else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def window_figures(before: Sample, after: Sample, bounds: Sequence[float]) -> dict[str, float | None]:
    """Requests/s, error share and p50/p99 (ms) between two samples of one series. A counter that went
    down (the service was re-created) reads as a fresh start."""
    elapsed = after.t - before.t
    reset = after.requests < before.requests
    requests = after.requests if reset else after.requests - before.requests
    errors = after.errors if reset else after.errors - before.errors
    counts = (
        after.buckets if reset else tuple(a - b for a, b in zip(after.buckets, before.buckets, strict=True))
    )
    p50, p99 = quantile(0.5, bounds, counts), quantile(0.99, bounds, counts)
    return {
        "rps": requests / elapsed if elapsed > 0 else None,
        "errorRate": errors / requests if requests > 0 else None,
        "p50": p50 * 1000 if p50 is not None else None,
        "p99": p99 * 1000 if p99 is not None else None,
    }


#: (service, revision, ready, desired) of one live pool.
PoolReading = tuple[str, str, int, int]


class MetricHistory:
    """Rings of samples per series, `keep_s` long, one sample per `step_s`."""

    def __init__(
        self,
        requests: MetricWrapperBase,
        latency: MetricWrapperBase,
        pools: Callable[[], Iterable[PoolReading]],
        *,
        step_s: float = 5.0,
        keep_s: float = 3600.0,
    ) -> None:
        self._requests = requests
        self._latency = latency
        self._pools = pools
        self.step_s = step_s
        self._length = int(keep_s / step_s) + 1
        self.bounds: tuple[float, ...] = ()
        self._traffic: dict[Key, deque[Sample]] = {}
        self._replicas: dict[tuple[str, str], deque[tuple[float, int, int]]] = {}

    def sample(self, now: float) -> None:
        """Read the counters and pools once, as of `now` (unix seconds)."""
        totals: dict[Key, list[float]] = {}
        for family in self._requests.collect():
            for s in family.samples:
                if not s.name.endswith("_total"):
                    continue
                labels = s.labels
                key = (labels["service"], labels["revision"], labels["variant"])
                counts = totals.setdefault(key, [0.0, 0.0])
                counts[0] += s.value
                if labels["status"] != "ok":
                    counts[1] += s.value
        buckets: dict[Key, list[tuple[float, float]]] = {}
        for family in self._latency.collect():
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    labels = s.labels
                    key = (labels["service"], labels["revision"], labels["variant"])
                    buckets.setdefault(key, []).append((float(labels["le"]), s.value))
        for key, (requests, errors) in totals.items():
            pairs = sorted(buckets.get(key, ()))
            if pairs and not self.bounds:
                self.bounds = tuple(bound for bound, _ in pairs)
            counts = tuple(count for _, count in pairs) or (0.0,) * len(self.bounds)
            ring = self._traffic.setdefault(key, deque(maxlen=self._length))
            ring.append(Sample(now, requests, errors, counts))
        for service, revision, ready, desired in self._pools():
            rings = self._replicas.setdefault((service, revision), deque(maxlen=self._length))
            rings.append((now, ready, desired))

    def services(self) -> set[str]:
        """The services with a history."""
        return {key[0] for key in self._traffic} | {key[0] for key in self._replicas}

    def forget(self, service: str) -> None:
        """Drop a deleted service's history."""
        for key in [k for k in self._traffic if k[0] == service]:
            del self._traffic[key]
        for key in [k for k in self._replicas if k[0] == service]:
            del self._replicas[key]

    def series(self, service: str, since: float) -> dict[str, Any]:
        """The charts of `service` from `since` (unix seconds): one traffic series per revision and
        variant, one replica series per revision (the dashboard's history endpoint answers this)."""
        traffic = []
        for (svc, revision, variant), ring in sorted(self._traffic.items()):
            if svc != service:
                continue
            points = [s for s in ring if s.t >= since - self.step_s]
            line: dict[str, Any] = {"revision": revision, "variant": variant, "t": []}
            for name in ("rps", "errorRate", "p50", "p99"):
                line[name] = []
            for before, after in itertools.pairwise(points):
                figures = window_figures(before, after, self.bounds)
                line["t"].append(round(after.t, 3))
                for name, value in figures.items():
                    line[name].append(value)
            traffic.append(line)
        replicas = []
        for (svc, revision), ring in sorted(self._replicas.items()):
            if svc != service:
                continue
            kept = [r for r in ring if r[0] >= since]
            replicas.append(
                {
                    "revision": revision,
                    "t": [round(t, 3) for t, _, _ in kept],
                    "ready": [ready for _, ready, _ in kept],
                    "desired": [desired for _, _, desired in kept],
                }
            )
        return {"step": self.step_s, "series": traffic, "replicas": replicas}
