"""Parsing the gateway's and the replicas' `/metrics` for the autoscaler, and counter rates."""

from __future__ import annotations

import pytest

from autoscaler.sources import MetricSourceError
from autoscaler.sources.scrape import GatewaySample, parse_gateway, parse_replica, rate

GATEWAY = """\
# HELP servegate_gateway_requests_total Requests.
# TYPE servegate_gateway_requests_total counter
servegate_gateway_requests_total{revision="a-predictor-00001",protocol="v2",status="ok"} 10.0
servegate_gateway_requests_total{revision="a-predictor-00001",protocol="v1",status="ok"} 5.0
servegate_gateway_requests_total{revision="a-predictor-00002",protocol="v2",status="timeout"} 1.0
# HELP servegate_gateway_queue_depth Queued.
# TYPE servegate_gateway_queue_depth gauge
servegate_gateway_queue_depth{service="a",revision="a-predictor-00001"} 3.0
servegate_gateway_queue_depth{service="a",revision="a-predictor-00003"} 0.0
# HELP servegate_gateway_outstanding_requests Outstanding.
# TYPE servegate_gateway_outstanding_requests gauge
servegate_gateway_outstanding_requests{service="a",revision="a-predictor-00001"} 4.0
# HELP servegate_gateway_inflight_requests In flight.
# TYPE servegate_gateway_inflight_requests gauge
servegate_gateway_inflight_requests{service="a"} 7.0
"""


def test_gateway_concurrency_is_outstanding_plus_queued_and_requests_add_up() -> None:
    assert parse_gateway(GATEWAY) == {
        "a-predictor-00001": GatewaySample(concurrency=7.0, requests_total=15.0),
        "a-predictor-00002": GatewaySample(concurrency=0.0, requests_total=1.0),
        "a-predictor-00003": GatewaySample(concurrency=0.0, requests_total=0.0),
    }


def test_replica_process_figures() -> None:
    text = (
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 12.5\n"
        "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 1.5e+08\n"
    )
    sample = parse_replica(text)
    assert (sample.cpu_seconds_total, sample.memory_bytes) == (12.5, 1.5e8)


def test_replica_without_process_metrics_is_an_error() -> None:
    with pytest.raises(MetricSourceError, match="process_cpu_seconds_total"):
        parse_replica("# TYPE x gauge\nx 1\n")


def test_unreadable_exposition_is_an_error() -> None:
    with pytest.raises(MetricSourceError, match="unreadable"):
        parse_gateway('servegate_gateway_queue_depth{revision="a" 1\n')


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        (None, (10.0, 5.0), None),  # one reading: no rate yet
        ((10.0, 5.0), (12.0, 9.0), 2.0),
        ((10.0, 5.0), (10.0, 9.0), None),  # same instant
        ((10.0, 50.0), (12.0, 4.0), 2.0),  # reset: the new value is the increase
    ],
)
def test_rate(
    previous: tuple[float, float] | None, current: tuple[float, float], expected: float | None
) -> None:
    assert rate(previous, current) == expected
