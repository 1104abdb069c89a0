"""PromQLSource against a real Prometheus scraping a real replica through the targets file.

Prometheus applies discovered targets every 5 s, so the first samples land about 6 s after it
starts; the module starts one Prometheus and waits for them once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from autoscaler.sources import MetricSourceError
from autoscaler.sources.promql import PromQLSource, render
from serving.auth.files import METRICS_TOKEN_FILE, write_secret
from serving.auth.internal import METRICS_ENV, REPLICA_TOKEN_ENV
from serving.monitoring import ReplicaTarget, scrape_config, targets_path, write_targets
from tests.conftest import MLP_SIZES
from tests.servers import ReplicaProcess, free_port, prometheus_server

pytestmark = pytest.mark.integration

REQUESTS = 'sum(servegate_requests_total{model="mlp"})'
SERVICE, REVISION, REPLICA = "mlp", "mlp-predictor-00001", "mlp-predictor-00001-x7k2p"
#: what an engine gives a replica it starts: the pool's token (everything but health needs it; here
#: the test's requests send it) and the metrics token, which Prometheus reads from the state dir.
POOL_TOKEN, METRICS_TOKEN = "test-pool-token", "test-metrics-token"


@pytest.fixture(scope="module")
def mlp_replica(model_repo: Path) -> Iterator[ReplicaProcess]:
    with ReplicaProcess(
        "--model-name", "mlp", "--model-uri", str(model_repo / "mlp" / "1"), grpc=False,
        env={REPLICA_TOKEN_ENV: POOL_TOKEN, METRICS_ENV: METRICS_TOKEN},
    ) as server:  # fmt: skip
        server.wait_ready()
        body = {"instances": [[0.5] * MLP_SIZES[0]]}
        headers = {"authorization": f"Bearer {POOL_TOKEN}"}
        for _ in range(5):
            response = httpx.post(f"{server.url}/v1/models/mlp:predict", json=body, headers=headers)
            assert response.status_code == 200, response.text
        yield server


@pytest.fixture(scope="module")
def prometheus(mlp_replica: ReplicaProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus scraping the replica every second, as `servegate prometheus-config` configures it;
    the gateway's address answers nothing (no gateway runs here)."""
    state_dir = tmp_path_factory.mktemp("state")
    write_secret(state_dir / METRICS_TOKEN_FILE, METRICS_TOKEN)  # as a gateway writes it
    gateway = f"127.0.0.1:{free_port()}"
    write_targets(
        targets_path(state_dir), gateway, [ReplicaTarget(SERVICE, REVISION, REPLICA, mlp_replica.url)]
    )
    with prometheus_server(scrape_config(state_dir, gateway, scrape_interval_s=1.0)) as url:
        yield url


@pytest.fixture
async def source(prometheus: str) -> AsyncIterator[PromQLSource]:
    async with PromQLSource(prometheus) as source:
        yield source


async def eventually(read: Callable[[], Awaitable[object]], expected: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (value := await read()) != expected:
        assert time.monotonic() < deadline, f"still {value!r}, not {expected!r}, after {timeout}s"
        await asyncio.sleep(0.2)


async def test_query_sums_what_prometheus_scraped_from_the_replica(source: PromQLSource) -> None:
    # Five requests, counted under one protocol and status: the sum is over every series.
    await eventually(lambda: source.query(REQUESTS), 5.0)
    # The targets file labels every series of the replica with its service, revision and replica.
    selector = render('service="{{service}}", revision="{{revision}}"', revision=REVISION, service=SERVICE)
    assert await source.query(f'sum(servegate_requests_total{{{selector}, replica="{REPLICA}"}})') == 5.0
    # Each target is scraped by one job: the gateway of the file is left to the static job.
    assert await source.query('count(up{job="servegate-replica"})') == 1.0
    assert await source.query('sum(up{job="servegate-replica"})') == 1.0
    # (The gateway's first scrape may come up to a scrape interval after the replica's.)
    await eventually(lambda: source.query('count(up{job="servegate-gateway"})'), 1.0)
    assert await source.query('sum(up{job="servegate-gateway"})') == 0.0  # nothing listens there


async def test_no_series_is_no_data(source: PromQLSource) -> None:
    await eventually(lambda: source.query(REQUESTS), 5.0)
    assert await source.query('sum(servegate_requests_total{model="nope"})') is None
    assert await source.query('servegate_requests_total{model="nope"}') is None
    # An hour ago, before the replica existed, there was no data either.
    assert await source.query(REQUESTS, at=time.time() - 3600) is None


async def test_a_scalar_is_returned_as_it_is(source: PromQLSource) -> None:
    assert await source.query("2 * 21") == 42.0
    assert await source.query("scalar(vector(1.5))") == 1.5


@pytest.mark.parametrize(
    ("expr", "error"),
    [
        ("servegate_requests_total[1m]", "returns a range vector"),
        ('"text"', "returns a string"),
        ("0 / 0", "returned nan, not a finite number"),
        ("vector(1) / 0", "returned inf, not a finite number"),
    ],
)
async def test_a_result_that_is_not_one_number_raises(source: PromQLSource, expr: str, error: str) -> None:
    with pytest.raises(MetricSourceError, match=error) as raised:
        await source.query(expr)
    assert repr(expr) in str(raised.value)


async def test_a_syntax_error_is_reported_in_prometheus_words(source: PromQLSource) -> None:
    expr = "sum(servegate_requests_total{"
    problem = await source.check(expr)
    assert problem is not None
    assert problem.startswith("1:30: parse error: unexpected end of input inside braces"), problem

    with pytest.raises(MetricSourceError) as raised:
        await source.query(expr)
    assert repr(expr) in str(raised.value)
    assert "bad_data" in str(raised.value)
    assert "parse error: unexpected end of input inside braces" in str(raised.value)


async def test_check_accepts_a_usable_query_and_refuses_a_range_vector(source: PromQLSource) -> None:
    assert await source.check("sum(rate(servegate_requests_total[1m]))") is None
    assert await source.check("1") is None
    assert "range vector" in (await source.check("servegate_requests_total[1m]") or "")


async def test_an_unreachable_prometheus_raises() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with PromQLSource(url, timeout_s=2.0) as source:
        with pytest.raises(MetricSourceError, match=f"Prometheus at {url} unreachable"):
            await source.query(REQUESTS)
        with pytest.raises(MetricSourceError, match=f"Prometheus at {url} unreachable"):
            await source.check(REQUESTS)


async def test_a_server_that_is_not_prometheus_raises(mlp_replica: ReplicaProcess) -> None:
    async with PromQLSource(mlp_replica.url) as source:
        with pytest.raises(MetricSourceError, match="answered HTTP 404, not the Prometheus API"):
            await source.query(REQUESTS)
