"""Autoscaling on a custom metric answered by a real Prometheus (PromQL): a bad query is refused at
apply with its field path, and a load step scales the revision up."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.monitoring import scrape_config
from tests.gateway_helpers import X_BODY, ControlApi, Load, python_isvc, revision
from tests.servers import GatewayProcess, prometheus_server, until


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A Prometheus scraping (every second) the replicas of the gateway whose state dir it yields."""
    state_dir = tmp_path_factory.mktemp("promql-gateway") / "state"
    # The gateway's own address does not matter here: the custom metric reads the replicas.
    with prometheus_server(scrape_config(state_dir, "127.0.0.1:1", scrape_interval_s=1.0)) as url:
        yield url, state_dir


@pytest.fixture(scope="module")
def gateway(prometheus: tuple[str, Path]) -> Iterator[GatewayProcess]:
    url, state_dir = prometheus
    process = GatewayProcess(state_dir, "--prometheus-url", url, "--autoscale-interval", "1")
    try:
        process.wait_live()
        yield process
    finally:
        process.stop()


def external(query: str, target: float) -> dict[str, Any]:
    metric = {"backend": "prometheus", "query": query}
    return {
        "metrics": [
            {"type": "External", "external": {"metric": metric, "target": {"type": "Value", "value": target}}}
        ]
    }


def busy(name: str, query: str) -> dict[str, Any]:
    predictor = {"minReplicas": 1, "maxReplicas": 3, "autoScaling": external(query, 1)}
    manifest = python_isvc(name, "Sleeper", env={"SLEEP_SECONDS": "0.2"}, predictor=predictor)
    manifest["metadata"]["annotations"] = {"autoscaling.knative.dev/window": "6s"}
    return manifest


#: requests in flight at the revision's replicas, summed: the replicas' own gauge, via Prometheus.
INFLIGHT = 'sum(servegate_inflight_requests{revision="{{revision}}"})'


def test_a_bad_query_is_refused_at_apply(api: ControlApi) -> None:
    response = api.apply_text(json.dumps(busy("badq", "sum(rate(x[1m]")))
    assert response.status_code == 400, response.text
    (problem,) = response.json()["problems"]
    assert (
        problem["path"]
        == "InferenceService/badq: spec.predictor.autoScaling.metrics[0].external.metric.query"
    )
    assert "parse error" in problem["message"]


def test_a_custom_metric_scales_up_under_load(gateway: GatewayProcess, api: ControlApi) -> None:
    api.apply(busy("custom", INFLIGHT))
    try:
        api.wait_ready("custom")
        rev = revision("custom", 1)

        def pool() -> dict[str, Any]:
            return api.status("custom")["components"]["predictor"]["replicas"][rev]

        with Load(gateway.url, "custom", X_BODY, concurrency=6, timeout=30, token=gateway.token) as load:
            until(lambda: pool()["ready"] == 3, 60, "3 replicas from the PromQL metric")
        assert load.failures() == []
        assert pool()["autoscaler"]["metric"] == "custom"
    finally:
        api.delete("custom")
