"""Gateway metrics on a registry passed in: requests and latency by service, revision, variant and
status; in-flight requests; queue depth and replica counts read from the live pools at scrape time.

`status` uses the replicas' vocabulary ("ok" or an error kind: invalid_input, not_found,
payload_too_large, model_failure, unavailable, timeout) so one dashboard query covers both tiers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.errors import kind_for_status

__all__ = ["GatewayMetrics", "PoolGauge", "status_for_http"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def status_for_http(code: int) -> str:
    if code < 400:
        return "ok"
    kind = kind_for_status(code)
    return kind.name.lower() if kind else f"http_{code}"


#: (service, revision, queued requests, outstanding requests, ready replicas, desired replicas,
#: whether the engine can place them), read at scrape time.
PoolGauge = tuple[str, str, int, int, int, int, bool]


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "servegate_gateway_requests",
            "Requests through the gateway by service, revision, A/B variant, protocol and outcome.",
            ["service", "revision", "variant", "protocol", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "servegate_gateway_request_duration_seconds",
            "Time from a request's arrival at the gateway to its answer (queueing included), in seconds.",
            ["service", "revision", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inflight = Gauge(
            "servegate_gateway_inflight_requests",
            "Requests being served through the gateway.",
            ["service"],
            registry=registry,
        )
        self.shadow_requests = Counter(
            "servegate_gateway_shadow_requests",
            "Mirrored (shadow) requests by service, shadow revision and outcome; their answers are dropped.",
            ["service", "revision", "status"],
            registry=registry,
        )
        self.logged_events = Counter(
            "servegate_gateway_logged_events",
            "Payload-logger CloudEvents by service and outcome (ok, rejected, failed, dropped).",
            ["service", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "servegate_gateway_retries",
            "Attempts that could not reach a replica and were re-sent to another, by revision.",
            ["revision"],
            registry=registry,
        )
        self.count_child = cache(self.requests.labels)
        self.latency_child = cache(self.request_seconds.labels)
        self.inflight_child = cache(self.inflight.labels)

    def watch_pools(self, read: Callable[[], Iterable[PoolGauge]]) -> None:
        """Export queue depth, outstanding requests and ready replicas of every live pool."""
        self.registry.register(_PoolCollector(read))


class _PoolCollector(Collector):
    def __init__(self, read: Callable[[], Iterable[PoolGauge]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        labels = ["service", "revision"]
        queued = GaugeMetricFamily(
            "servegate_gateway_queue_depth", "Requests waiting for a replica with room.", labels=labels
        )
        outstanding = GaugeMetricFamily(
            "servegate_gateway_outstanding_requests",
            "Requests sent to replicas, not yet answered.",
            labels=labels,
        )
        ready = GaugeMetricFamily(
            "servegate_gateway_ready_replicas", "Replicas taking traffic, per revision.", labels=labels
        )
        desired = GaugeMetricFamily(
            "servegate_gateway_desired_replicas",
            "Replicas the controller asked for, per revision.",
            labels=labels,
        )
        unschedulable = GaugeMetricFamily(
            "servegate_gateway_unschedulable",
            "1 while the engine cannot place a revision's replicas (GPUs, images), else 0.",
            labels=labels,
        )
        for service, revision, q, o, r, d, placeable in self._read():
            queued.add_metric([service, revision], q)
            outstanding.add_metric([service, revision], o)
            ready.add_metric([service, revision], r)
            desired.add_metric([service, revision], d)
            unschedulable.add_metric([service, revision], 0.0 if placeable else 1.0)
        return [queued, outstanding, ready, desired, unschedulable]
