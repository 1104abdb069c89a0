"""A service's charts from Prometheus, when the gateway has one (`--prometheus-url`): the same shape
as `MetricHistory.series`, over any window Prometheus keeps and across gateway restarts.

`queries` is the pure part (the PromQL for one service and window); `prometheus_series` asks and
lines the answers up on one time grid.
"""

from __future__ import annotations

import asyncio
from typing import Any

from autoscaler.sources.promql import PromQLSource, render

__all__ = ["prometheus_series", "queries", "range_step"]

#: about this many points per chart, whatever the window.
POINTS = 360
_TRAFFIC = "servegate_gateway_requests_total"
_LATENCY = "servegate_gateway_request_duration_seconds_bucket"


def range_step(seconds: float) -> float:
    """The step between two points of a window `seconds` long: at least 5 s, about `POINTS` points."""
    return max(5.0, round(seconds / POINTS))


def queries(service: str, step: float) -> dict[str, str]:
    """PromQL for the service's charts: figure -> query. Rates are taken over at least 30 s so a
    point always spans a few scrapes."""
    window = f"{int(max(30.0, 2 * step))}s"
    by = "revision, variant"
    selector = '{service="{{service}}"}'
    errors = '{service="{{service}}", status!="ok"}'
    rate = f"sum by ({by}) (rate({_TRAFFIC}{selector}[{window}]))"
    out = {
        "rps": rate,
        "errorRate": f"sum by ({by}) (rate({_TRAFFIC}{errors}[{window}])) / {rate}",
        "p50": f"1000 * histogram_quantile(0.5, sum by (le, {by}) (rate({_LATENCY}{selector}[{window}])))",
        "p99": f"1000 * histogram_quantile(0.99, sum by (le, {by}) (rate({_LATENCY}{selector}[{window}])))",
        "ready": 'max by (revision) (servegate_gateway_ready_replicas{service="{{service}}"})',
        "desired": 'max by (revision) (servegate_gateway_desired_replicas{service="{{service}}"})',
    }
    return {name: render(expr, revision="", service=service) for name, expr in out.items()}


async def prometheus_series(source: PromQLSource, service: str, since: float, until: float) -> dict[str, Any]:
    """The charts of `service` from `since` to `until` (Unix seconds), as Prometheus has them.
    Raises MetricSourceError when Prometheus cannot answer."""
    step = range_step(until - since)
    start = since - since % step  # a grid that does not move between two refreshes
    asked = queries(service, step)
    names = list(asked)
    answers = await asyncio.gather(*(source.query_range(asked[n], start, until, step) for n in names))
    results = dict(zip(names, answers, strict=True))
    grid = [start + i * step for i in range(int((until - start) // step) + 1)]

    def values(points: list[tuple[float, float]]) -> list[float | None]:
        at = {round(t, 3): v for t, v in points}
        return [at.get(round(t, 3)) for t in grid]

    lines: dict[tuple[str, str], dict[str, Any]] = {}
    for name in ("rps", "errorRate", "p50", "p99"):
        for labels, points in results[name]:
            key = (labels.get("revision", ""), labels.get("variant", ""))
            line = lines.setdefault(key, {"revision": key[0], "variant": key[1], "t": grid})
            line[name] = values(points)
    for line in lines.values():
        for name in ("rps", "errorRate", "p50", "p99"):
            line.setdefault(name, [None] * len(grid))
    replicas: dict[str, dict[str, Any]] = {}
    for name in ("ready", "desired"):
        for labels, points in results[name]:
            revision = labels.get("revision", "")
            entry = replicas.setdefault(revision, {"revision": revision, "t": grid})
            entry[name] = values(points)
    for entry in replicas.values():
        for name in ("ready", "desired"):
            entry.setdefault(name, [None] * len(grid))
    return {
        "step": step,
        "series": [lines[k] for k in sorted(lines)],
        "replicas": [replicas[k] for k in sorted(replicas)],
    }
