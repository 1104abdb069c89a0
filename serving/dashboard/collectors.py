"""Registry and pipeline activity on the gateway's `/metrics`, read from their databases at scrape
time: the Grafana dashboard's "Registry and pipelines" row draws them.

Each collector runs one small read per refresh and keeps the answer for `max_age_s` (5 s), since the
gateway's `/metrics` is read by the autoscaler every tick as well as by Prometheus. A scrape runs on
the gateway's event loop, so the read runs in a thread and a scrape answers the latest read: it
never waits on a database. A database that cannot be read is logged (once until it recovers) and
the collector exports nothing: a scrape never fails for it.

    registry.register(RegistryCollector(model_registry))
    registry.register(PipelineRunsCollector(StoreOpener.for_state_dir(state_dir)))
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from serving.pipelines.metadata import MetadataStore
    from serving.registry.registry import Registry

__all__ = ["PipelineRunsCollector", "RegistryCollector"]

log = logging.getLogger(__name__)

#: the statuses a run is in: every pipeline exports all three, so a count at 0 is a series too.
RUN_STATUSES = ("RUNNING", "SUCCEEDED", "FAILED")


class _CachedCollector(Collector):
    """Families read by `_read` at most every `max_age_s` seconds; nothing while it raises.

    background: read in a thread, so that a scrape never waits on a database (one that is remote,
    or unreachable until a connect timeout): a scrape answers what the last read found, and starts
    the next read when that is older than `max_age_s`. False: read within the scrape (tests).
    """

    what = ""

    def __init__(self, max_age_s: float, clock: Callable[[], float], background: bool) -> None:
        self._max_age_s = max_age_s
        self._clock = clock
        self._background = background
        self._families: list[Metric] = []
        self._read_at: float | None = None
        self._reading = False
        self._failing = False
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        now = self._clock()
        with self._lock:
            due = not self._reading and (self._read_at is None or now - self._read_at >= self._max_age_s)
            if due:
                self._reading, self._read_at = True, now
        if due and self._background:
            threading.Thread(target=self._refresh, name=type(self).__name__, daemon=True).start()
        elif due:
            self._refresh()
        return list(self._families)

    def _refresh(self) -> None:
        try:
            self._families = self._read()
        except Exception as exc:  # monitoring must never fail a scrape
            self._families = []
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "cannot read %s for /metrics: %s", self.what, exc)
            self._failing = True
        else:
            self._failing = False
        finally:
            self._reading = False

    def describe(self) -> Iterable[Metric]:
        # Names only (no database read): lets the registry refuse a clash at register().
        return self._empty()

    def _read(self) -> list[Metric]:
        raise NotImplementedError

    def _empty(self) -> list[Metric]:
        raise NotImplementedError


class RegistryCollector(_CachedCollector):
    """The model registry's contents: versions per model, where each alias points, and a counter of
    changes (its audit log's latest entry number).

    Exports `servegate_registry_model_versions{model}` (the highest version number, archived ones
    included), `servegate_registry_alias_version{model,alias}` and `servegate_registry_changes_total`.
    """

    what = "the model registry"

    def __init__(
        self,
        registry: Registry,
        *,
        max_age_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        super().__init__(max_age_s, clock, background)
        self._registry = registry

    def _empty(self) -> list[Metric]:
        versions = GaugeMetricFamily(
            "servegate_registry_model_versions",
            "Versions registered of each model: its highest version number (archived ones included).",
            labels=["model"],
        )
        aliases = GaugeMetricFamily(
            "servegate_registry_alias_version",
            "The version each alias of a model points at.",
            labels=["model", "alias"],
        )
        changes = CounterMetricFamily(
            "servegate_registry_changes",
            "Changes to the registry (registrations, alias moves, gates, archiving, trust): the number "
            "of its audit log's latest entry.",
            labels=[],
        )
        return [versions, aliases, changes]

    def _read(self) -> list[Metric]:
        models = self._registry.models()
        mark = self._registry.change_mark()
        versions, aliases, changes = families = self._empty()
        for model in models:
            versions.add_metric([model.name], model.latest_version)
            for alias, version in sorted(model.aliases.items()):
                aliases.add_metric([model.name, alias], version)
        changes.add_metric([], mark)
        return families


class PipelineRunsCollector(_CachedCollector):
    """Pipeline runs in the metadata store: how many per pipeline and status, and when each
    pipeline's latest run started.

    Exports `servegate_pipeline_runs{pipeline,status}` and
    `servegate_pipeline_last_run_timestamp_seconds{pipeline}`. `open_store` is called at every
    refresh and gives the store, or None while there is none (no run recorded yet: nothing is
    exported); it keeps the store it opens, and its owner closes it (`serving.pipelines.api.
    StoreOpener` does both, and never creates a database just to find it empty).
    """

    what = "the pipelines' metadata store"

    def __init__(
        self,
        open_store: Callable[[], MetadataStore | None],
        *,
        max_age_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        super().__init__(max_age_s, clock, background)
        self._open_store = open_store

    def _empty(self) -> list[Metric]:
        runs = GaugeMetricFamily(
            "servegate_pipeline_runs",
            "Pipeline runs recorded in the metadata store, per pipeline and status "
            "(RUNNING, SUCCEEDED, FAILED).",
            labels=["pipeline", "status"],
        )
        last = GaugeMetricFamily(
            "servegate_pipeline_last_run_timestamp_seconds",
            "When each pipeline's latest run started, in Unix seconds.",
            labels=["pipeline"],
        )
        return [runs, last]

    def _read(self) -> list[Metric]:
        store = self._open_store()
        if store is None:
            return []
        counts: dict[str, dict[str, int]] = {}
        latest: dict[str, float] = {}
        for row in store.run_totals():
            counts.setdefault(row.pipeline, dict.fromkeys(RUN_STATUSES, 0))[row.status] = row.runs
            latest[row.pipeline] = max(latest.get(row.pipeline, row.last_started), row.last_started)
        runs, last = families = self._empty()
        for pipeline, by_status in counts.items():
            for status, count in by_status.items():
                runs.add_metric([pipeline, status], count)
            last.add_metric([pipeline], latest[pipeline])
        return families
