"""The dashboard's charts from Prometheus: the queries name the service safely, and the answers are
lined up on one grid in the shape of the gateway's own history (their PromQL runs against a real
Prometheus in tests/integration/test_grafana_dashboard.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from autoscaler.sources import MetricSourceError
from serving.dashboard.prom_history import prometheus_series, queries, range_step


@pytest.mark.parametrize(("seconds", "step"), [(60, 5.0), (3600, 10.0), (7 * 86400, 1680.0)])
def test_about_360_points_whatever_the_window(seconds: float, step: float) -> None:
    assert range_step(seconds) == step


def test_the_queries_select_the_service_escaped() -> None:
    asked = queries('we"ird', 10.0)
    assert set(asked) == {"rps", "errorRate", "p50", "p99", "ready", "desired"}
    for expr in asked.values():
        assert 'service="we\\"ird"' in expr
    assert "[30s]" in asked["rps"]  # at least 30 s, so a point spans a few scrapes
    assert "[40s]" in queries("iris", 20.0)["rps"]


class FakeProm:
    """Answers each figure's query with the points given for it."""

    def __init__(self, answers: dict[str, list[tuple[dict[str, str], list[tuple[float, float]]]]]) -> None:
        self.answers = answers
        self.asked: list[tuple[float, float, float]] = []

    async def query_range(self, expr: str, start: float, end: float, step: float) -> Any:
        self.asked.append((start, end, step))
        for name, expected in queries("iris", step).items():
            if expr == expected:
                return self.answers.get(name, [])
        raise AssertionError(expr)


def test_answers_are_lined_up_on_one_grid() -> None:
    rev = {"revision": "iris-1", "variant": ""}
    prom = FakeProm(
        {
            "rps": [(rev, [(1000.0, 2.0), (1010.0, 4.0)])],
            "p99": [(rev, [(1010.0, 12.5)])],
            "ready": [({"revision": "iris-1"}, [(1000.0, 1.0), (1005.0, 2.0), (1010.0, 2.0)])],
        }
    )
    out = asyncio.run(prometheus_series(prom, "iris", since=1003.0, until=1012.0))  # type: ignore[arg-type]
    assert prom.asked == [(1000.0, 1012.0, 5.0)] * 6
    assert out["step"] == 5.0
    (line,) = out["series"]
    assert line["t"] == [1000.0, 1005.0, 1010.0]
    assert line["rps"] == [2.0, None, 4.0]
    assert line["p99"] == [None, None, 12.5]
    assert line["errorRate"] == line["p50"] == [None, None, None]
    (replicas,) = out["replicas"]
    assert replicas["ready"] == [1.0, 2.0, 2.0]
    assert replicas["desired"] == [None, None, None]


def test_a_failing_prometheus_raises_for_the_caller_to_fall_back() -> None:
    class Down:
        async def query_range(self, *args: Any) -> Any:
            raise MetricSourceError("Prometheus at http://127.0.0.1:1 unreachable")

    with pytest.raises(MetricSourceError):
        asyncio.run(prometheus_series(Down(), "iris", 0.0, 60.0))  # type: ignore[arg-type]
