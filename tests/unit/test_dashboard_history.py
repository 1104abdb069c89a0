"""The gateway's own metric history: quantiles as `histogram_quantile` reads buckets, rates between
samples, and the series the dashboard's charts draw, from the gateway's real counters."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from router.metrics import GatewayMetrics
from serving.dashboard.history import MetricHistory, Sample, quantile, window_figures

INF = math.inf
BOUNDS = (0.001, 0.01, 0.1, INF)


@pytest.mark.parametrize(
    ("q", "counts", "expected"),
    [
        (0.5, (0, 0, 0, 0), None),  # nothing observed
        (0.5, (10, 10, 10, 10), 0.0005),  # all in the first bucket: half way into it
        (0.5, (0, 10, 10, 10), 0.0055),  # in (0.001, 0.01]: interpolated from its lower bound
        (0.99, (50, 100, 100, 100), 0.01 - 0.009 * 0.02),
        (0.5, (0, 0, 0, 10), 0.1),  # in +Inf: the last finite bound
        (1.0, (5, 5, 10, 10), 0.1),
    ],
)
def test_quantile_interpolates_inside_a_bucket(
    q: float, counts: tuple[float, ...], expected: float | None
) -> None:
    got = quantile(q, BOUNDS, counts)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_window_figures_are_rates_between_two_samples() -> None:
    before = Sample(100.0, requests=100, errors=2, buckets=(10, 90, 100, 100))
    after = Sample(105.0, requests=150, errors=7, buckets=(10, 140, 150, 150))
    figures = window_figures(before, after, BOUNDS)
    assert figures["rps"] == pytest.approx(10.0)
    assert figures["errorRate"] == pytest.approx(0.1)
    # All 50 new requests fell in (0.001, 0.01]: p50 half way, p99 near its top; in milliseconds.
    assert figures["p50"] == pytest.approx(5.5)
    assert figures["p99"] == pytest.approx(1 + 9 * 0.99)


def test_idle_windows_have_no_error_share_or_latency_and_resets_start_afresh() -> None:
    quiet = window_figures(Sample(0, 5, 0, (5, 5, 5, 5)), Sample(5, 5, 0, (5, 5, 5, 5)), BOUNDS)
    assert quiet == {"rps": 0.0, "errorRate": None, "p50": None, "p99": None}
    # The counters went down (the service was deleted and made again): read them as new.
    reset = window_figures(Sample(0, 500, 9, (500,) * 4), Sample(10, 20, 0, (20,) * 4), BOUNDS)
    assert reset["rps"] == pytest.approx(2.0)
    assert reset["errorRate"] == 0.0


def test_the_history_reads_the_gateways_counters_and_pools() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    pools = [("iris", "iris-predictor-00001", 1, 2)]
    history = MetricHistory(metrics.requests, metrics.request_seconds, lambda: pools, step_s=5, keep_s=60)

    def serve(ok: int, failed: int, seconds: float) -> None:
        for status, n in (("ok", ok), ("model_failure", failed)):
            for _ in range(n):
                metrics.requests.labels("iris", "iris-predictor-00001", "", "v2", status).inc()
                metrics.request_seconds.labels("iris", "iris-predictor-00001", "").observe(seconds)

    serve(1, 0, 0.002)
    history.sample(1000.0)
    serve(90, 10, 0.002)
    pools[0] = ("iris", "iris-predictor-00001", 2, 2)
    history.sample(1005.0)

    out = history.series("iris", since=900.0)
    (line,) = out["series"]
    assert (line["revision"], line["variant"], line["t"]) == ("iris-predictor-00001", "", [1005.0])
    assert line["rps"] == [pytest.approx(20.0)]
    assert line["errorRate"] == [pytest.approx(0.1)]
    assert 1.0 < line["p50"][0] <= 2.5  # the bucket (1 ms, 2.5 ms], in ms
    (replicas,) = out["replicas"]
    assert replicas == {
        "revision": "iris-predictor-00001",
        "t": [1000.0, 1005.0],
        "ready": [1, 2],
        "desired": [2, 2],
    }
    assert history.series("other", since=0.0) == {"step": 5, "series": [], "replicas": []}


def test_the_history_keeps_its_window_and_forgets_deleted_services() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.requests.labels("iris", "r1", "", "v2", "ok").inc()
    history = MetricHistory(
        metrics.requests, metrics.request_seconds, lambda: [("iris", "r1", 1, 1)], step_s=5, keep_s=20
    )
    for i in range(10):
        history.sample(1000.0 + 5 * i)
    (line,) = history.series("iris", since=0.0)["series"]
    assert len(line["t"]) == 4  # five samples kept: four windows
    assert history.services() == {"iris"}
    history.forget("iris")
    assert history.services() == set()
