"""Registry and pipeline activity on `/metrics`: read from real databases (SQLite in a temporary
folder), kept for `max_age_s`, and never failing a scrape."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from predictors.examples import make_mlp_onnx
from serving.dashboard.collectors import PipelineRunsCollector, RegistryCollector
from serving.pipelines.api import StoreOpener
from serving.pipelines.metadata import MetadataError, MetadataStore, RunTotals
from serving.pipelines.types import PipelineSpec
from serving.registry.registry import Registry, RegistryConfig
from serving.registry.types import RegisteredModel, RegistryUnavailable
from tests.gateway_helpers import metric_total
from tests.servers import until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scrape(*collectors: object) -> str:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)  # type: ignore[arg-type]
    return generate_latest(registry).decode()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    config = RegistryConfig(f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "artifacts"))
    with Registry(config, cache_dir=tmp_path / "cache") as reg:
        yield reg


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetadataStore]:
    with MetadataStore(f"sqlite:///{tmp_path / 'pipelines.db'}") as s:
        yield s


def test_the_registry_exports_versions_aliases_and_changes(registry: Registry, tmp_path: Path) -> None:
    source = make_mlp_onnx(tmp_path / "src" / "model.onnx", (4, 8, 2))
    registry.register("mlp", str(source))
    registry.register("mlp", str(source))
    registry.register("other", str(source))
    registry.set_alias("mlp", "production", 1)

    text = scrape(RegistryCollector(registry, background=False))
    assert metric_total(text, "servegate_registry_model_versions", model="mlp") == 2
    assert metric_total(text, "servegate_registry_model_versions", model="other") == 1
    assert metric_total(text, "servegate_registry_alias_version", model="mlp", alias="production") == 1
    assert metric_total(text, "servegate_registry_changes_total") == 4


def test_an_empty_registry_exports_its_change_counter_only(registry: Registry) -> None:
    text = scrape(RegistryCollector(registry, background=False))
    assert "servegate_registry_changes_total 0.0" in text
    assert "servegate_registry_model_versions{" not in text


class CountingRegistry:
    """A registry whose reads are counted, and fail while `broken`."""

    def __init__(self) -> None:
        self.reads = 0
        self.broken = False

    def models(self) -> list[RegisteredModel]:
        self.reads += 1
        if self.broken:
            raise RegistryUnavailable("the registry's database is locked")
        return [RegisteredModel("m", "", 0.0, 0.0, 3)]

    def change_mark(self) -> int:
        return 7


def test_a_read_is_kept_for_max_age() -> None:
    fake, clock = CountingRegistry(), Clock()
    collector = RegistryCollector(fake, max_age_s=5.0, clock=clock, background=False)  # type: ignore[arg-type]
    first = scrape(collector)
    clock.now += 4.9
    assert scrape(collector) == first
    assert fake.reads == 1
    clock.now += 0.1
    scrape(collector)
    assert fake.reads == 2


def test_an_unreadable_database_exports_nothing_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    fake, clock = CountingRegistry(), Clock()
    collector = RegistryCollector(fake, max_age_s=1.0, clock=clock, background=False)  # type: ignore[arg-type]
    fake.broken = True
    with caplog.at_level(logging.DEBUG, logger="serving.dashboard.collectors"):
        for _ in range(3):
            text = scrape(collector)
            assert "servegate_registry" not in text
            clock.now += 1.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "database is locked" in warnings[0].getMessage()
    assert fake.reads == 3  # tried again at every refresh

    fake.broken = False
    assert metric_total(scrape(collector), "servegate_registry_model_versions", model="m") == 3


class SlowRegistry(CountingRegistry):
    """A registry whose reads wait until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.started = 0

    def models(self) -> list[RegisteredModel]:
        self.started += 1
        assert self.release.wait(10.0)
        return super().models()


def test_a_scrape_never_waits_on_the_database() -> None:
    fake, clock = SlowRegistry(), Clock()
    collector = RegistryCollector(fake, max_age_s=1.0, clock=clock)  # type: ignore[arg-type]
    try:
        # The read the first scrape started is stuck: scrapes answer at once, with nothing yet, and
        # start no second read.
        assert "servegate_registry_model_versions{" not in scrape(collector)
        until(lambda: fake.started == 1, 10.0, "the first read to start")
        for _ in range(3):
            clock.now += 1.0
            assert "servegate_registry_model_versions{" not in scrape(collector)
        assert fake.started == 1
    finally:
        fake.release.set()
    until(lambda: "servegate_registry_model_versions{" in scrape(collector), 10.0, "the first read")


def test_registering_reads_no_database() -> None:
    fake = CountingRegistry()
    registry = CollectorRegistry()
    registry.register(RegistryCollector(fake))  # type: ignore[arg-type]
    assert fake.reads == 0
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(RegistryCollector(fake))  # type: ignore[arg-type]


def test_pipeline_runs_are_counted_per_pipeline_and_status(store: MetadataStore) -> None:
    times = iter([100.0, 200.0, 300.0, 400.0, 500.0])
    store._clock = lambda: next(times)
    done = store.start_run(PipelineSpec("fraud", {}, ()), "local")  # started at 100
    store.finish_run(done, "SUCCEEDED")
    store.start_run(PipelineSpec("fraud", {}, ()), "local")  # 300, still running
    failed = store.start_run(PipelineSpec("churn", {}, ()), "local")  # 400
    store.finish_run(failed, "FAILED")

    assert store.run_totals() == [
        RunTotals("churn", "FAILED", 1, 400.0),
        RunTotals("fraud", "RUNNING", 1, 300.0),
        RunTotals("fraud", "SUCCEEDED", 1, 100.0),
    ]
    text = scrape(PipelineRunsCollector(lambda: store, background=False))
    assert metric_total(text, "servegate_pipeline_runs", pipeline="fraud", status="SUCCEEDED") == 1
    assert metric_total(text, "servegate_pipeline_runs", pipeline="fraud", status="RUNNING") == 1
    assert 'servegate_pipeline_runs{pipeline="fraud",status="FAILED"} 0.0' in text
    assert metric_total(text, "servegate_pipeline_runs", pipeline="churn", status="FAILED") == 1
    assert metric_total(text, "servegate_pipeline_last_run_timestamp_seconds", pipeline="fraud") == 300
    assert metric_total(text, "servegate_pipeline_last_run_timestamp_seconds", pipeline="churn") == 400


def test_no_store_yet_exports_nothing_and_a_failing_one_is_asked_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pipelines.db'}"
    opener = StoreOpener(url)  # None until the file exists: no run recorded yet
    calls: list[str] = []
    reachable = True

    def open_store() -> MetadataStore | None:
        calls.append("open")
        if not reachable:
            raise MetadataError("cannot reach the metadata database")
        return opener()

    clock = Clock()
    collector = PipelineRunsCollector(open_store, max_age_s=1.0, clock=clock, background=False)
    assert "servegate_pipeline" not in scrape(collector)
    assert not (tmp_path / "pipelines.db").exists()  # a scrape creates no database

    reachable = False
    clock.now += 1.0
    assert "servegate_pipeline" not in scrape(collector)

    reachable = True
    with MetadataStore(url) as store:
        store.finish_run(store.start_run(PipelineSpec("fraud", {}, ()), "local"), "SUCCEEDED")
    clock.now += 1.0
    text = scrape(collector)
    assert metric_total(text, "servegate_pipeline_runs", pipeline="fraud", status="SUCCEEDED") == 1
    assert calls == ["open"] * 3
    opener.close()
