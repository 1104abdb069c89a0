"""The autoscaling loop on fakes: scripted metric sources, a fake clock stepped tick by tick, and an
engine that records each resize and follows it at once (the replicas are ready by the next tick).

With the default config a replica carries 100 * 0.7 = 70 concurrent requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from autoscaler.config import ScalingConfig
from autoscaler.metrics import AutoscalerMetrics
from autoscaler.runner import Autoscaler, ScaleTarget
from autoscaler.sources import MetricSourceError
from autoscaler.sources.promql import PromQLSource
from autoscaler.sources.scrape import GatewaySample, ReplicaSample, ScrapeSource

GATEWAY = "http://gateway:8080"
GIB = 1024**3


class FakeScrape(ScrapeSource):
    """What the gateway and each replica answer now; the tests change it between ticks."""

    def __init__(self) -> None:
        self.gateway_samples: dict[str, GatewaySample] = {}
        self.gateway_error: str | None = None
        self.replicas: dict[str, ReplicaSample | MetricSourceError] = {}
        self.gateway_calls = 0
        self.closed = False

    async def gateway(self, base_url: str) -> dict[str, GatewaySample]:
        assert base_url == GATEWAY
        self.gateway_calls += 1
        if self.gateway_error is not None:
            raise MetricSourceError(self.gateway_error)
        return dict(self.gateway_samples)

    async def replica(self, base_url: str) -> ReplicaSample:
        answer = self.replicas[base_url]
        if isinstance(answer, MetricSourceError):
            raise answer
        return answer

    def load(self, revision: str, concurrency: float, requests_total: float = 0.0) -> None:
        self.gateway_samples[revision] = GatewaySample(concurrency, requests_total)

    async def aclose(self) -> None:
        self.closed = True


class FakePromQL(PromQLSource):
    """Answers each rendered query from `values` (an exception is raised)."""

    def __init__(self, values: dict[str, float | Exception | None]) -> None:
        self.values = values
        self.queries: list[str] = []

    async def query(self, expr: str, at: float | None = None) -> float | None:
        self.queries.append(expr)
        answer = self.values[expr]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def aclose(self) -> None:
        pass


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Harness:
    """An Autoscaler over fakes; `resize` is recorded and the engine follows it at once."""

    def __init__(self, *targets: ScaleTarget, promql: FakePromQL | None = None) -> None:
        self.clock = Clock()
        self.targets = {t.revision: t for t in targets}
        self.resized: list[tuple[str, int, str]] = []
        #: what the engine's resize raises, and an event it waits for first, when set.
        self.failure: Exception | None = None
        self.blocked: asyncio.Event | None = None
        self.scrape = FakeScrape()
        self.registry = CollectorRegistry()
        self.autoscaler = Autoscaler(
            self.current,
            self.resize,
            GATEWAY,
            scrape=self.scrape,
            promql=promql,
            metrics=AutoscalerMetrics(self.registry),
            clock=self.clock,
        )

    def current(self) -> Sequence[ScaleTarget]:
        return list(self.targets.values())

    async def resize(self, revision: str, replicas: int, reason: str) -> None:
        self.resized.append((revision, replicas, reason))
        if self.blocked is not None:
            await self.blocked.wait()
        if self.failure is not None:
            raise self.failure
        self.targets[revision] = replace(self.targets[revision], desired=replicas, ready=replicas)

    async def tick(self, after_s: float = 2.0) -> None:
        self.clock.t += after_s
        await self.autoscaler.tick()

    def counts(self, revision: str = "r1") -> list[int]:
        return [n for rev, n, _ in self.resized if rev == revision]

    def sample(self, name: str, revision: str = "r1", **labels: str) -> float | None:
        return self.registry.get_sample_value(name, {"service": "svc", "revision": revision, **labels})


def target(revision: str = "r1", *, ready: int = 1, created: float = 1000.0, **config: object) -> ScaleTarget:
    return ScaleTarget(
        service="svc",
        revision=revision,
        config=ScalingConfig(**config),  # type: ignore[arg-type]
        ready=ready,
        desired=ready,
        replica_urls=tuple(f"http://{revision}-{i}:9000" for i in range(ready)),
        memory_limit_bytes=None,
        created=created,
    )


async def test_a_load_step_scales_up_with_a_readable_reason() -> None:
    h = Harness(target(panic_threshold_pct=1000))  # no panic: the stable window alone decides
    h.scrape.load("r1", 0)
    await h.tick()
    assert h.resized == []
    assert (
        h.autoscaler.status("r1").reason
        == "concurrency 0 per replica, target 70 (100 x 70%): holds 1 replica"
    )

    h.scrape.load("r1", 210)
    await h.tick()  # (0 + 210) / 2 = 105 over one replica: 2
    assert h.resized == [("r1", 2, "concurrency 105 per replica, target 70 (100 x 70%): 1 -> 2 replicas")]
    await h.tick()  # 140 over two: 2, held
    await h.tick()  # 157.5: 3
    assert h.counts() == [2, 3]
    status = h.autoscaler.status("r1")
    assert (status.desired, status.panic, status.observed, status.error) == (3, False, 157.5 / 2, None)


async def test_a_burst_panics() -> None:
    h = Harness(target())
    h.scrape.load("r1", 350)
    await h.tick()
    [(_, replicas, reason)] = h.resized
    assert replicas == 5
    assert reason.startswith("panic (350 per replica over the last 6s): concurrency 350 per replica")
    assert h.autoscaler.status("r1").panic


async def test_load_gone_scales_down_by_the_rate_limit_each_tick() -> None:
    h = Harness(target(stable_window_s=6))  # 3 buckets of 2 s; the panic window is one
    h.scrape.load("r1", 560)
    await h.tick()
    assert h.counts() == [8]
    h.scrape.load("r1", 0)
    for _ in range(3):  # panic holds a stable window long
        await h.tick()
    assert h.counts() == [8]
    for _ in range(4):
        await h.tick()
    assert h.counts() == [8, 4, 2, 1]  # halved each tick (max-scale-down-rate 2), down to min 1
    assert "limited by the scale-down rate" in h.resized[1][2]


async def test_scale_to_zero_after_the_grace_period() -> None:
    h = Harness(target(min_replicas=0, stable_window_s=6, scale_to_zero_grace_s=10, created=1000.0))
    h.scrape.load("r1", 0)
    for _ in range(5):  # t = 1002 .. 1010: within the grace period from creation
        await h.tick()
    assert h.resized == []
    assert "last replica kept until idle for 10s" in h.autoscaler.status("r1").reason

    h.scrape.load("r1", 1)  # a request at t = 1012 restarts the grace period
    await h.tick()
    h.scrape.load("r1", 0)
    for _ in range(5):  # t = 1014 .. 1022
        await h.tick()
    assert h.resized == []
    await h.tick()  # t = 1024: idle for 12 s
    assert h.resized == [("r1", 0, "no requests for 12s: scale to zero")]
    assert h.autoscaler.status("r1").desired == 0


async def test_a_revision_that_was_never_ready_is_not_scaled_to_zero() -> None:
    # Its replica waits (for a node, a slow model): scaled away now, no request could wake it.
    coming = replace(target(min_replicas=0, stable_window_s=6, scale_to_zero_grace_s=4), ready=0, desired=1)
    h = Harness(coming)
    h.scrape.load("r1", 0)
    for _ in range(10):  # t = 1002 .. 1020: long past the grace period from creation
        await h.tick()
    assert h.resized == []
    h.targets["r1"] = replace(h.targets["r1"], ready=1, replica_urls=("http://r1-0:9000",))
    for _ in range(2):  # ready from t = 1022: the grace period runs from its last unready tick
        await h.tick()
    assert h.resized == []
    await h.tick()
    assert h.resized == [("r1", 0, "no requests for 6s: scale to zero")]


async def test_poke_at_zero_asks_for_a_replica_at_once() -> None:
    at_zero = replace(target(min_replicas=0, scale_to_zero_grace_s=10), ready=0, desired=0, replica_urls=())
    h = Harness(at_zero)
    h.autoscaler.poke("r1")  # before any tick: the revision is looked up in targets()
    h.autoscaler.poke("r1")  # a second poke while the first is pending adds nothing
    await asyncio.sleep(0)
    assert h.resized == [("r1", 1, "requests waiting: scale from zero")]
    assert h.autoscaler.status("r1").desired == 1
    h.autoscaler.poke("r1")  # it has a replica coming now
    await asyncio.sleep(0)
    assert len(h.resized) == 1

    # The poke counts as a request: the replica is not taken away within the grace period.
    h.targets["r1"] = replace(h.targets["r1"], ready=0)  # still starting
    h.scrape.gateway_samples.clear()
    for _ in range(5):
        await h.tick()
    assert len(h.resized) == 1


async def test_poke_on_a_running_revision_only_records_activity() -> None:
    h = Harness(target(min_replicas=0, stable_window_s=6, scale_to_zero_grace_s=10))
    h.autoscaler.poke("r1")
    await asyncio.sleep(0)
    assert h.resized == []
    h.autoscaler.poke("unknown")  # not autoscaled: nothing to do


async def test_rps_is_the_rate_of_the_request_counter() -> None:
    h = Harness(target(metric="rps", target=10))  # 7 rps per replica
    h.scrape.load("r1", 0, requests_total=100)
    await h.tick()  # one reading: no rate yet
    assert h.resized == []
    assert h.autoscaler.status("r1").reason == "no rps sample in the last 60s: holds 1 replica"
    h.scrape.load("r1", 0, requests_total=128)
    await h.tick()  # 28 requests in 2 s: 14 rps
    assert h.counts() == [2]
    assert h.autoscaler.status("r1").observed == 14


async def test_cpu_sums_the_replicas_counter_rates() -> None:
    h = Harness(target(ready=2, metric="cpu", target=50))
    urls = h.targets["r1"].replica_urls
    h.scrape.replicas = {urls[0]: ReplicaSample(10.0, 1e8), urls[1]: ReplicaSample(20.0, 1e8)}
    await h.tick()
    assert h.resized == []  # counters, not rates yet
    h.scrape.replicas = {urls[0]: ReplicaSample(11.5, 1e8), urls[1]: ReplicaSample(21.5, 1e8)}
    await h.tick()  # 0.75 core each: 150% over 50% per replica
    # Two replicas at start: the autoscaler starts in panic, so their history cannot scale down.
    [(_, replicas, reason)] = h.resized
    assert (replicas, reason) == (
        3,
        "panic (75% per replica over the last 6s): cpu 75% per replica, target 50%: 2 -> 3 replicas",
    )


async def test_a_replica_that_does_not_answer_counts_as_the_mean_of_the_others() -> None:
    h = Harness(target(ready=2, metric="cpu", target=50))
    urls = h.targets["r1"].replica_urls
    h.scrape.replicas = {urls[0]: ReplicaSample(10.0, 1e8), urls[1]: ReplicaSample(20.0, 1e8)}
    await h.tick()
    h.scrape.replicas = {urls[0]: ReplicaSample(11.5, 1e8), urls[1]: MetricSourceError("down")}
    await h.tick()
    assert h.counts() == [3]
    h.scrape.replicas = {url: MetricSourceError(f"{url} down") for url in urls}
    await h.tick()
    status = h.autoscaler.status("r1")
    assert status.error == f"{urls[0]} down; {urls[1]} down"
    assert status.desired == 3


async def test_memory_is_a_percentage_of_the_limit() -> None:
    h = Harness(replace(target(ready=2, metric="memory", target=50), memory_limit_bytes=GIB))
    urls = h.targets["r1"].replica_urls
    h.scrape.replicas = {urls[0]: ReplicaSample(1.0, 0.6 * GIB), urls[1]: ReplicaSample(1.0, 0.5 * GIB)}
    await h.tick()  # 60% + 50% = 110% over 50% per replica
    assert h.counts() == [3]
    assert h.autoscaler.status("r1").observed == 55


async def test_memory_without_a_limit_is_an_error() -> None:
    h = Harness(target(metric="memory", target=50))
    await h.tick()
    assert "needs a memory limit" in h.autoscaler.status("r1").error
    assert h.resized == []


async def test_custom_metric_from_the_rendered_query() -> None:
    query = 'sum(queue_length{revision="{{revision}}", service="{{service}}"})'
    rendered = 'sum(queue_length{revision="r1", service="svc"})'
    promql = FakePromQL({rendered: 30.0})
    h = Harness(target(metric="custom", target=10, query=query), promql=promql)
    await h.tick()
    assert promql.queries == [rendered]
    assert h.counts() == [3]
    assert h.resized[0][2].endswith("custom 30 per replica, target 10: 1 -> 3 replicas")


async def test_custom_metric_without_prometheus_is_an_error() -> None:
    h = Harness(target(metric="custom", target=10, query="up"))
    await h.tick()
    status = h.autoscaler.status("r1")
    assert status.error == "the custom metric needs --prometheus-url"
    assert status.reason == "custom unavailable: holds 1 replica"
    assert h.sample("servegate_autoscaler_errors_total") == 1


async def test_a_failing_source_holds_its_revision_and_the_others_scale() -> None:
    promql = FakePromQL({"broken": MetricSourceError("Prometheus at http://p:9090 unreachable")})
    h = Harness(target("r1", metric="custom", target=10, query="broken"), target("r2"), promql=promql)
    h.scrape.load("r2", 350)
    await h.tick()
    failed = h.autoscaler.status("r1")
    assert (failed.desired, failed.error) == (1, "Prometheus at http://p:9090 unreachable")
    assert h.counts("r1") == []
    assert h.counts("r2") == [5]
    assert h.autoscaler.status("r2").error is None


async def test_the_gateway_failing_holds_every_revision_scaled_on_it() -> None:
    h = Harness(
        target("r1"),
        target("r2", metric="rps", target=10),
        replace(target("r3", metric="memory", target=50), memory_limit_bytes=GIB),
    )
    h.scrape.replicas = {h.targets["r3"].replica_urls[0]: ReplicaSample(1.0, 0.8 * GIB)}
    h.scrape.gateway_error = "cannot scrape http://gateway:8080/metrics: connection refused"
    await h.tick()
    await h.tick()
    assert h.scrape.gateway_calls == 2  # once per tick, whatever the number of revisions
    for revision in ("r1", "r2"):
        assert h.autoscaler.status(revision).error == h.scrape.gateway_error
        assert h.counts(revision) == []
    assert h.counts("r3") == [2]  # memory is read from the replicas


async def test_a_failing_resize_is_reported() -> None:
    h = Harness(target())
    h.failure = RuntimeError("engine stopped")
    h.scrape.load("r1", 350)
    await h.tick()
    status = h.autoscaler.status("r1")
    assert status.error == "resize to 5 failed: engine stopped"
    assert h.sample("servegate_autoscaler_desired_replicas") == 1  # still what the engine has


async def test_a_revision_leaving_the_targets_is_forgotten() -> None:
    h = Harness(target("r1"), target("r2"))
    h.scrape.load("r2", 350)
    await h.tick()
    assert h.sample("servegate_autoscaler_desired_replicas", "r2") == 5
    del h.targets["r2"]
    await h.tick()
    assert h.autoscaler.status("r2") is None
    assert h.autoscaler.status("r1") is not None
    for name, labels in [
        ("servegate_autoscaler_desired_replicas", {}),
        ("servegate_autoscaler_observed", {"metric": "concurrency"}),
        ("servegate_autoscaler_decisions_total", {"direction": "up"}),
    ]:
        assert h.sample(name, "r2", **labels) is None
    assert h.sample("servegate_autoscaler_desired_replicas", "r1") == 1


async def test_metrics_after_a_tick() -> None:
    h = Harness(target(ready=2))
    h.scrape.load("r1", 280)  # 140 per replica: 4, and panic (4 >= 2 x 2)
    await h.tick()
    assert h.counts() == [4]
    assert h.sample("servegate_autoscaler_desired_replicas") == 4
    assert h.sample("servegate_autoscaler_ready_replicas") == 2  # ready at the decision
    assert h.sample("servegate_autoscaler_panic") == 1
    assert h.sample("servegate_autoscaler_observed", metric="concurrency") == 140
    assert h.sample("servegate_autoscaler_target") == 70
    assert h.sample("servegate_autoscaler_decisions_total", direction="up") == 1
    await h.tick()
    assert h.sample("servegate_autoscaler_decisions_total", direction="hold") == 1
    assert h.sample("servegate_autoscaler_ready_replicas") == 4
    assert h.sample("servegate_autoscaler_errors_total") is None


async def test_a_new_window_when_the_window_length_changes() -> None:
    h = Harness(target(panic_threshold_pct=1000))
    h.scrape.load("r1", 0)
    for _ in range(3):
        await h.tick()
    h.targets["r1"] = replace(h.targets["r1"], config=ScalingConfig(stable_window_s=6))
    h.scrape.load("r1", 140)
    await h.tick()  # the zeros went with the old window: 140 over 70 per replica
    assert h.counts() == [2]


async def test_run_survives_a_failing_tick_and_stops_when_cancelled() -> None:
    calls = 0
    ticked = asyncio.Event()

    def targets() -> list[ScaleTarget]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("controller not ready")
        if calls >= 3:
            ticked.set()
        return []

    async def resize(revision: str, replicas: int, reason: str) -> None:
        raise AssertionError("no revision to resize")

    scrape = FakeScrape()
    autoscaler = Autoscaler(targets, resize, GATEWAY, scrape=scrape, tick_s=0.01)
    task = asyncio.create_task(autoscaler.run())
    await asyncio.wait_for(ticked.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await autoscaler.aclose()
    assert scrape.closed


async def test_a_revision_created_at_zero_stays_there_until_a_request() -> None:
    at_zero = replace(target(min_replicas=0, initial_scale=0), ready=0, desired=0, replica_urls=())
    h = Harness(at_zero)
    for _ in range(3):  # no grace period to wait out: it has no replica to keep
        await h.tick()
    assert h.resized == []
    h.scrape.load("r1", 2)  # queued at the gateway
    await h.tick()
    assert h.counts() == [1]


async def test_aclose_cancels_a_pending_poke() -> None:
    at_zero = replace(target(min_replicas=0), ready=0, desired=0, replica_urls=())
    h = Harness(at_zero)
    h.blocked = asyncio.Event()  # never set
    h.autoscaler.poke("r1")
    await asyncio.sleep(0)
    assert len(h.resized) == 1  # under way
    await h.autoscaler.aclose()
    assert h.scrape.closed


class Gateways(FakeScrape):
    """Several gateways on one state, each with its own counters; one may stop answering."""

    def __init__(self) -> None:
        super().__init__()
        self.by_url: dict[str, dict[str, GatewaySample]] = {}
        self.down: set[str] = set()

    async def gateway(self, base_url: str) -> dict[str, GatewaySample]:
        if base_url in self.down:
            raise MetricSourceError(f"cannot scrape {base_url}/metrics")
        return dict(self.by_url[base_url])


async def test_several_gateways_traffic_is_summed_and_one_leaving_is_no_spike() -> None:
    clock, resized = Clock(), []
    scrape = Gateways()
    urls = ["http://a:8080", "http://b:8080"]
    targets = {"r1": target(metric="rps", target=10)}

    async def resize(revision: str, replicas: int, reason: str) -> None:
        resized.append(replicas)
        targets[revision] = replace(targets[revision], desired=replicas, ready=replicas)

    autoscaler = Autoscaler(lambda: list(targets.values()), resize, lambda: urls, scrape=scrape, clock=clock)
    for a, b in [(100, 1000), (114, 1014)]:  # 7 rps through each: 14 in all
        scrape.by_url = {urls[0]: {"r1": GatewaySample(0, a)}, urls[1]: {"r1": GatewaySample(0, b)}}
        clock.t += 2
        await autoscaler.tick()
    assert autoscaler.status("r1").observed == 14 and resized == [2]
    # Gateway b leaves (its large counter with it): a's own rate goes on, no reset is read.
    urls.pop()
    scrape.by_url = {urls[0]: {"r1": GatewaySample(0, 128)}}
    clock.t += 2
    await autoscaler.tick()
    # The window holds 14 and now 7 rps, over 2 replicas; read as a reset, b's counter going would
    # have added a 64 rps spike and a scale-up.
    assert autoscaler.status("r1").observed == (14 + 7) / 2 / 2 and resized == [2]
    scrape.down.add(urls[0])  # none answers: the revision holds, with why
    clock.t += 2
    await autoscaler.tick()
    assert "cannot scrape http://a:8080/metrics" in (autoscaler.status("r1").error or "")
