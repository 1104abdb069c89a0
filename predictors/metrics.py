"""Replica metrics on a registry passed in (no globals), exported at `/metrics`.

Label values are bounded: `model` is a served model's name (requests for unknown models are
counted under model=""), `protocol` is one of v1, v2, grpc, and `status` is "ok" or the
error kind (invalid_input, not_found, payload_too_large, model_failure, unavailable, timeout).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from functools import cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from predictors.gpu_metrics import gpu_collector
from serving.errors import ErrorKind

__all__ = ["MODEL_STATES", "ReplicaMetrics", "status_label"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MODEL_STATES = ("LOADING", "READY", "FAILED", "UNLOADING", "UNAVAILABLE")


def status_label(kind: ErrorKind | None) -> str:
    return "ok" if kind is None else kind.name.lower()


class ReplicaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._states: _ModelStateCollector | None = None
        # CPU seconds and resident memory: what the autoscaler's cpu and memory metrics read.
        ProcessCollector(registry=registry)
        # Utilization and memory of the replica's GPUs, when it has any (and NVML is there).
        self._gpus = gpu_collector()
        if self._gpus is not None:
            registry.register(self._gpus)
        self.requests = Counter(
            "servegate_requests",
            "Inference requests by model, protocol and outcome.",
            ["model", "protocol", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "servegate_request_duration_seconds",
            "Time from a decoded request to an encoded response, in seconds.",
            ["model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "servegate_queue_duration_seconds",
            "Time a request waited for the model (batch forming, busy instances), in seconds.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute_seconds = Histogram(
            "servegate_compute_duration_seconds",
            "Time the model ran for one call (one batch when batching), in seconds.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "servegate_batch_size",
            "Rows per model call.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.inflight = Gauge(
            "servegate_inflight_requests",
            "Inference requests being served.",
            ["model"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.request_child = cache(lambda model, protocol: self.request_seconds.labels(model, protocol))
        self.count_child = cache(
            lambda model, protocol, status: self.requests.labels(model, protocol, status)
        )
        self.inflight_child = cache(lambda model: self.inflight.labels(model))
        # Per-model children of the per-call histograms: (queue, compute, batch size).
        self._call_children = cache(
            lambda model: (
                self.queue_seconds.labels(model),
                self.compute_seconds.labels(model),
                self.batch_size.labels(model),
            )
        )

    def observe_request(self, model: str, protocol: str, kind: ErrorKind | None, seconds: float) -> None:
        self.count_child(model, protocol, status_label(kind)).inc()
        self.request_child(model, protocol).observe(seconds)

    def observe_call(self, model: str, rows: int, queue_seconds: list[float], compute_seconds: float) -> None:
        queue, compute, batch = self._call_children(model)
        for seconds in queue_seconds:
            queue.observe(seconds)
        compute.observe(compute_seconds)
        batch.observe(rows)

    def watch_model_states(self, source: Callable[[], Iterable[tuple[str, str, str]]]) -> None:
        """Export `servegate_model_state` from `source()`: (model, version, state) of every model."""
        self._states = _ModelStateCollector(source)
        self._registry.register(self._states)

    def exposition(self) -> CollectorRegistry:
        """The registry `/metrics` renders: this one, or in multiprocess mode (`--workers`) one that
        adds up every worker's files, plus this worker's view of model states."""
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return self._registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        ProcessCollector(registry=registry)  # the answering worker's own process
        if self._gpus is not None:
            registry.register(self._gpus)
        if self._states is not None:
            registry.register(self._states)
        return registry


class _ModelStateCollector(Collector):
    # Read at scrape time, so the exported state is always the repository's own view.
    def __init__(self, source: Callable[[], Iterable[tuple[str, str, str]]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "servegate_model_state",
            "1 for the state each model is in (LOADING, READY, FAILED, UNLOADING, UNAVAILABLE), else 0.",
            labels=["model", "version", "state"],
        )
        for model, version, current in self._source():
            for state in MODEL_STATES:
                family.add_metric([model, version, state], 1.0 if state == current else 0.0)
        yield family
