"""The autoscaler's own metrics, on a registry passed in: what each revision was seen at, what it
was asked to be, and how often a decision went up, down or held.

Every series is labelled by service and revision; `forget` removes a revision's children once it
is no longer autoscaled, so a retired revision does not linger at its last value.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["DIRECTIONS", "AutoscalerMetrics"]

#: the `direction` of a decision: more replicas, fewer, or as many as asked already.
DIRECTIONS = ("up", "down", "hold")

_LABELS = ["service", "revision"]


class AutoscalerMetrics:
    """Gauges and counters of the autoscaler, per (service, revision)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.desired = Gauge(
            "servegate_autoscaler_desired_replicas",
            "Replicas the autoscaler wants for the revision (the pool's size while it holds).",
            _LABELS,
            registry=registry,
        )
        self.ready = Gauge(
            "servegate_autoscaler_ready_replicas",
            "Ready replicas of the revision at the last decision.",
            _LABELS,
            registry=registry,
        )
        self.panic = Gauge(
            "servegate_autoscaler_panic",
            "1 while the revision is in panic mode (scaled on the short window, never down), else 0.",
            _LABELS,
            registry=registry,
        )
        self.observed = Gauge(
            "servegate_autoscaler_observed",
            "The stable-window average of the scaling metric per ready replica, in the metric's unit.",
            [*_LABELS, "metric"],
            registry=registry,
        )
        self.target = Gauge(
            "servegate_autoscaler_target",
            "What one replica should carry, in the metric's unit (utilization applied).",
            _LABELS,
            registry=registry,
        )
        self.decisions = Counter(
            "servegate_autoscaler_decisions",
            "Scaling decisions by direction: up, down or hold.",
            [*_LABELS, "direction"],
            registry=registry,
        )
        self.errors = Counter(
            "servegate_autoscaler_errors",
            "Ticks where the revision's metric could not be read or its resize failed.",
            _LABELS,
            registry=registry,
        )
        # (service, revision) -> the `metric` label its observed child carries.
        self._metric: dict[tuple[str, str], str] = {}

    def record(
        self,
        service: str,
        revision: str,
        *,
        metric: str,
        ready: int,
        desired: int,
        panic: bool,
        target: float,
        observed: float | None,
    ) -> None:
        """The revision's state after a tick; `observed` None (no data, an error) leaves it as it was."""
        self.ready.labels(service, revision).set(ready)
        self.desired.labels(service, revision).set(desired)
        self.panic.labels(service, revision).set(1 if panic else 0)
        self.target.labels(service, revision).set(target)
        key = (service, revision)
        previous = self._metric.get(key)
        if previous is not None and previous != metric:
            # The service now scales on another metric: its old series would read as current.
            with contextlib.suppress(KeyError):
                self.observed.remove(service, revision, previous)
            del self._metric[key]
        if observed is not None:
            self.observed.labels(service, revision, metric).set(observed)
            self._metric[key] = metric

    def decision(self, service: str, revision: str, direction: str) -> None:
        """Count one decision; `direction` is one of `DIRECTIONS`."""
        self.decisions.labels(service, revision, direction).inc()

    def error(self, service: str, revision: str) -> None:
        self.errors.labels(service, revision).inc()

    def forget(self, service: str, revision: str) -> None:
        """Remove every child of the revision."""
        metric = self._metric.pop((service, revision), None)
        children: list[tuple[Gauge | Counter, tuple[str, ...]]] = [
            (gauge, (service, revision)) for gauge in (self.desired, self.ready, self.panic, self.target)
        ]
        children += [(self.decisions, (service, revision, d)) for d in DIRECTIONS]
        children.append((self.errors, (service, revision)))
        if metric is not None:
            children.append((self.observed, (service, revision, metric)))
        for family, labels in children:
            with contextlib.suppress(KeyError):  # never set: nothing to remove
                family.remove(*labels)
