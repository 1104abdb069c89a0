"""The Grafana dashboard against a real Prometheus scraping a real `servegate up` under load: every
panel's query parses and returns data (GPU panels too, on a machine whose replicas have GPUs and
NVML), and every variable lists the served service.

Besides the load (good requests and a trickle of bad ones, for the errors panel), the gateway's state
dir gets a registry version with an alias and a finished pipeline run, and the load makes the
autoscaler scale the revision up, so every row of the dashboard has something to show."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autoscaler.sources.promql import PromQLSource
from predictors.examples import make_mlp_onnx
from predictors.gpu_metrics import gpu_collector
from serving.dashboard.grafana import grafana_dashboard
from serving.dashboard.prom_history import prometheus_series
from serving.engines.gpus import detect_gpus
from serving.monitoring import scrape_config
from serving.pipelines.metadata import MetadataStore
from serving.pipelines.types import PipelineSpec
from serving.registry.registry import Registry, RegistryConfig
from tests.gateway_helpers import X_BODY, ControlApi, Load, gateway_process, python_isvc, revision
from tests.servers import GatewayProcess, prometheus_server, until

SERVICE = "dash"
#: a second service holding a GPU, deployed where there is one: the GPU panels read its replica.
GPU_SERVICE = "dash-gpu"
#: one value short of its shape: the replica answers 400 (invalid_input).
BAD_BODY = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0]}]}
#: Grafana's own variables, as it would fill them in.
INTERVALS = {"__rate_interval": "10s", "__interval": "5s", "__range": "1m"}
_GPU_METRICS = re.compile(r"\bservegate_gpu_")


def _gpu_ids() -> tuple[str, str | None]:
    """(why GPU panels may be empty, or "" when they must have data; the GPU a replica may ask for)."""
    gpus = detect_gpus()
    if not gpus:
        return "this machine has no GPU (neither NVML nor nvidia-smi sees one)", None
    index = str(gpus[0].index)
    if gpu_collector({"SERVEGATE_GPU_IDS": index}) is None:
        return "NVML (nvidia-ml-py) is not installed: replicas export no GPU metrics", index
    return "", index


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from gateway_process(tmp_path_factory.mktemp("grafana") / "state", "--autoscale-interval", "1")


@pytest.fixture(scope="module")
def prometheus(gateway: GatewayProcess) -> Iterator[str]:
    config = scrape_config(gateway.state_dir, f"127.0.0.1:{gateway.http_port}", scrape_interval_s=1.0)
    with prometheus_server(config) as url:
        yield url


def query(prometheus: str, expr: str) -> dict[str, Any]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10.0, trust_env=False)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]


def fill(text: str, values: dict[str, str]) -> str:
    """`text` with the dashboard's variables replaced by `values` (a multi-select: `a|b`)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: (values | INTERVALS)[m.group(1)], text)


def label_values(prometheus: str, variable: dict[str, Any], values: dict[str, str]) -> list[str]:
    """What Grafana lists for a `label_values(SELECTOR, LABEL)` variable."""
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
    assert match is not None, variable["query"]
    response = httpx.get(
        f"{prometheus}/api/v1/label/{match.group(2)}/values",
        params={"match[]": fill(match.group(1), values)},
        timeout=10.0,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


def record_activity(state_dir: Path) -> None:
    """A registry version with an alias, and a finished pipeline run, in the gateway's state dir."""
    source = make_mlp_onnx(state_dir.parent / "src" / "model.onnx", (4, 8, 2))
    with Registry(RegistryConfig.from_env(state_dir), cache_dir=state_dir.parent / "cache") as registry:
        registry.register("dash-model", str(source), metrics={"accuracy": 0.9})
        registry.set_alias("dash-model", "production", 1)
    with MetadataStore.from_env(state_dir) as store:
        run = store.start_run(PipelineSpec("dash-train", {}, ()), "local")
        store.finish_run(run, "SUCCEEDED")


def _charted(prometheus: str) -> bool:
    """Whether the dashboard's Prometheus-backed charts of SERVICE show its traffic and replicas."""

    async def ask() -> dict[str, Any]:
        async with PromQLSource(prometheus) as source:
            return await prometheus_series(source, SERVICE, time.time() - 300, time.time())

    charts = asyncio.run(ask())
    lines = [s for s in charts["series"] if s["revision"] == revision(SERVICE, 1)]
    ready = [r for r in charts["replicas"] if r["revision"] == revision(SERVICE, 1)]
    if not lines:
        return False
    line = lines[0]
    return (
        len(line["t"]) == len(line["rps"]) == len(line["p99"])
        and any(v is not None and v > 0 for v in line["rps"])
        and any(v is not None and v > 0 for v in line["p50"])
        and any(v is not None and v > 0 for v in line["errorRate"])  # the bad requests' share
        and bool(ready)
        and any(v is not None and v >= 1 for v in ready[0]["ready"])
    )


def test_every_panel_query_returns_data(gateway: GatewayProcess, api: ControlApi, prometheus: str) -> None:
    gpu_missing, gpu = _gpu_ids()
    services = [SERVICE] if gpu is None else [SERVICE, GPU_SERVICE]
    # 4 requests in flight against a target of 1 per replica: the autoscaler scales up at once.
    manifest = python_isvc(
        SERVICE,
        "Sleeper",
        env={"SLEEP_SECONDS": "0.05"},
        predictor={"minReplicas": 1, "maxReplicas": 2, "scaleTarget": 1},
    )
    manifest["metadata"]["annotations"] = {"autoscaling.knative.dev/window": "6s"}
    manifests = [manifest]
    if gpu is not None:
        model = {"resources": {"limits": {"nvidia.com/gpu": 1}}}
        manifests.append(python_isvc(GPU_SERVICE, "Sleeper", model=model))
    # What Grafana sends with every served service and revision selected.
    values = {
        "namespace": "default",
        "service": "|".join(services),
        "revision": "|".join(revision(service, 1) for service in services),
    }
    api.apply(*manifests)
    try:
        for service in services:
            api.wait_ready(service)
        record_activity(gateway.state_dir)
        token = gateway.token
        with (
            Load(gateway.url, SERVICE, X_BODY, concurrency=4, timeout=30, token=token) as load,
            Load(gateway.url, SERVICE, BAD_BODY, concurrency=1, timeout=30, token=token) as bad,
        ):
            up = 'servegate_autoscaler_decisions_total{direction="up"}'
            until(lambda: query(prometheus, up)["result"], 45, "a scale-up decision in Prometheus")
            dashboard = grafana_dashboard()
            for panel in (p for p in dashboard["panels"] if p["type"] != "row"):
                for target in panel["targets"]:
                    expr = fill(target["expr"], values)
                    if _GPU_METRICS.search(expr) and gpu_missing:
                        assert query(prometheus, expr)["result"] == [], expr
                        continue  # parsed (status success), and empty: `gpu_missing` says why
                    what = f"panel {panel['title']!r} to return data for {expr}"
                    until(lambda expr=expr: query(prometheus, expr)["result"], 20, what)
            for variable in dashboard["templating"]["list"]:
                if variable["type"] == "query":
                    listed = label_values(prometheus, variable, values)
                    assert set(values[variable["name"]].split("|")) <= set(listed), variable["name"]
            # The dashboard's own charts read the same series when the gateway has --prometheus-url.
            until(lambda: _charted(prometheus), 20, "the service's charts from Prometheus")
        assert {o.status for o in load.snapshot()} == {200}, load.failures()[:3]
        assert {o.status for o in bad.snapshot()} == {400}, bad.snapshot()[:3]
    finally:
        for service in services:
            api.delete(service)
    if gpu_missing:
        print(f"GPU panels parsed and were empty: {gpu_missing}")
