"""The Grafana dashboard's JSON: its grid, its variables, and every query checked against the metrics
the code defines (names, label matchers, grouping labels). That the queries parse and return data
is checked through a real Prometheus in tests/integration/test_grafana_dashboard.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from autoscaler.metrics import AutoscalerMetrics
from predictors.gpu_metrics import GpuCollector
from predictors.metrics import ReplicaMetrics
from router.metrics import GatewayMetrics
from serving.cli.main import cli
from serving.dashboard.collectors import PipelineRunsCollector, RegistryCollector
from serving.dashboard.grafana import DATASOURCE_INPUT, dashboard_json, grafana_dashboard
from serving.monitoring import GATEWAY_JOB, REPLICA_JOB
from serving.pipelines.metadata import RunTotals
from serving.registry.types import RegisteredModel
from tests.servers import ROOT

EXAMPLE = ROOT / "examples" / "grafana" / "servegate.json"
#: labels Prometheus adds to every series of a job (serving/monitoring.py's targets).
TARGET_LABELS = {
    GATEWAY_JOB: {"job", "instance"},
    REPLICA_JOB: {"job", "instance", "namespace", "service", "revision", "replica"},
}
#: Grafana's own variables.
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range"}
_KEYWORDS = {"by", "without", "or", "and", "unless", "on", "ignoring", "group_left", "group_right", "bool"}


# -- what the code exports -------------------------------------------------------------------------


class _FakeNvml:
    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=50, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=1, total=2)


class _FakeRegistry:
    def models(self) -> list[RegisteredModel]:
        return [RegisteredModel("m", "", 0.0, 0.0, 2, {"production": 2})]

    def change_mark(self) -> int:
        return 3


class _FakeStore:
    def run_totals(self) -> list[RunTotals]:
        return [RunTotals("p", "SUCCEEDED", 1, 1.0)]


def _with_children(*owners: object) -> None:
    """One child of every labelled metric the owners hold, so that a collect shows its samples."""
    for owner in owners:
        for metric in vars(owner).values():
            if isinstance(metric, MetricWrapperBase):
                metric.labels(*("x" for _ in metric._labelnames))


def _samples(registry: CollectorRegistry, job: str) -> dict[str, tuple[str, set[str]]]:
    found: dict[str, tuple[str, set[str]]] = {}
    for family in registry.collect():
        for sample in family.samples:
            found.setdefault(sample.name, (job, set(TARGET_LABELS[job])))[1].update(sample.labels)
    return found


@pytest.fixture(scope="module")
def exported() -> dict[str, tuple[str, set[str]]]:
    """Every series name servegate exports -> (the job that scrapes it, its labels once scraped)."""
    gateway = CollectorRegistry()
    router = GatewayMetrics(gateway)
    router.watch_pools(lambda: [("s", "r", 0, 0, 1, 1, True)])
    _with_children(router, AutoscalerMetrics(gateway))
    gateway.register(RegistryCollector(_FakeRegistry(), background=False))  # type: ignore[arg-type]
    gateway.register(PipelineRunsCollector(_FakeStore, background=False))  # type: ignore[arg-type]

    replica = CollectorRegistry()
    metrics = ReplicaMetrics(replica)  # with the process collector: CPU seconds, resident memory
    metrics.watch_model_states(lambda: [("m", "1", "READY")])
    replica.register(GpuCollector(_FakeNvml(), [0]))
    _with_children(metrics)
    found = _samples(gateway, GATEWAY_JOB)
    clash = found.keys() & (replica_samples := _samples(replica, REPLICA_JOB)).keys()
    assert not clash, f"both tiers export {clash}: the dashboard could not tell them apart"
    return found | replica_samples


# -- reading the dashboard's queries ---------------------------------------------------------------


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every target."""
    return [(p["title"], t["expr"]) for p in _panels(dashboard) for t in p["targets"]]


_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{([^}]*)\})?(\s*\()?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, op, value)]) of every series selector in `expr`."""
    bare = re.sub(r"\[[^\]]*\]", "", _GROUPING.sub(" ", expr))  # range durations and groupings out
    found = []
    for match in _SELECTOR.finditer(bare):
        name, body, call = match.groups()
        if call or name in _KEYWORDS:
            continue
        found.append((name, _MATCHER.findall(body or "")))
    return found


def _grouping_labels(expr: str) -> set[str]:
    return {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()}


def _balanced(expr: str) -> bool:
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    if '"' in unquoted.replace('""', ""):
        return False
    depth: list[str] = []
    pairs = {")": "(", "}": "{", "]": "["}
    for char in unquoted:
        if char in "({[":
            depth.append(char)
        elif char in pairs and (not depth or depth.pop() != pairs[char]):
            return False
    return not depth


# -- the tests -------------------------------------------------------------------------------------


def test_panels_have_unique_ids_and_fit_the_grid_without_overlap() -> None:
    panels = grafana_dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0 and grid["y"] >= 0, panel["title"]
        if panel["type"] == "row":
            assert (grid["x"], grid["w"], grid["h"]) == (0, 24, 1)
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_the_issues_panels_are_there() -> None:
    titles = " | ".join(p["title"].lower() for p in _panels(grafana_dashboard()))
    for words in (
        "request rate",
        "errors by status",
        "p50 / p90 / p99",
        "queue depth",
        "in flight",
        "desired vs ready",
        "panic",
        "decisions",
        "cpu",
        "memory",
        "gpu utilization",
        "batch size",
        "load states",
        "registry",
        "pipeline runs",
    ):
        assert words in titles


def test_every_query_names_exported_series_and_their_labels(
    exported: dict[str, tuple[str, set[str]]],
) -> None:
    for title, expr in _exprs(grafana_dashboard()):
        assert _balanced(expr), f"{title}: unbalanced {expr}"
        selectors = _selectors(expr)
        assert selectors, f"{title}: no series in {expr}"
        for name, matchers in selectors:
            assert name in exported, f"{title}: no metric exports {name}"
            job, labels = exported[name]
            for label, _op, value in matchers:
                assert label in labels, f"{title}: {name} has no label {label!r} (it has {sorted(labels)})"
                if label == "job":
                    assert value == job, f"{title}: {name} is scraped by {job}, not {value}"
        for label in _grouping_labels(expr):
            for name, _ in selectors:
                assert label in exported[name][1], f"{title}: groups by {label!r}, which {name} lacks"


def test_variables_are_declared_used_and_fed_by_exported_labels(
    exported: dict[str, tuple[str, set[str]]],
) -> None:
    dashboard = grafana_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queries = {name: v for name, v in variables.items() if v["type"] == "query"}
    assert set(queries) == {"namespace", "service", "revision"}

    used: set[str] = set()
    texts = [expr for _, expr in _exprs(dashboard)] + [v["query"] for v in queries.values()]
    for text in texts:
        for braced, plain in _VARIABLE.findall(text):
            used.add(braced or plain)
    assert used - BUILTIN_VARIABLES <= set(variables), used - BUILTIN_VARIABLES - set(variables)
    assert set(queries) <= used

    for name, variable in queries.items():
        assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
        assert match, variable["query"]
        ((metric, matchers),) = _selectors(match.group(1))
        assert match.group(2) == name
        assert name in exported[metric][1], f"{metric} has no label {name}"
        assert all(label in exported[metric][1] for label, _, _ in matchers)


def test_every_panel_reads_the_datasource_variable() -> None:
    dashboard = grafana_dashboard()
    ((source,),) = [[i for i in dashboard["__inputs"] if i["name"] == DATASOURCE_INPUT]]
    assert source["pluginId"] == "prometheus"
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    for panel in _panels(dashboard):
        assert panel["datasource"] == datasource, panel["title"]
        assert all(t["datasource"] == datasource for t in panel["targets"])
        assert panel["targets"] and len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert variable["current"]["value"] == "${DS_PROMETHEUS}"


def test_a_datasource_uid_pins_the_source_and_drops_the_import_input() -> None:
    dashboard = grafana_dashboard("prom-1_a")
    assert "__inputs" not in dashboard
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert variable["current"]["value"] == "prom-1_a"
    assert "DS_PROMETHEUS" not in json.dumps(dashboard)


@pytest.mark.parametrize("uid", ["", "has space", "x" * 41, "${DS}", 'quo"te'])
def test_a_bad_datasource_uid_is_refused(uid: str) -> None:
    with pytest.raises(ValueError, match="not a Grafana data source uid"):
        grafana_dashboard(uid)


def test_the_dashboard_identifies_itself() -> None:
    dashboard = grafana_dashboard()
    assert (dashboard["uid"], dashboard["title"]) == ("servegate", "servegate")
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert grafana_dashboard() == dashboard  # pure: the same every time


def test_the_file_in_the_repository_is_the_commands_output() -> None:
    assert EXAMPLE.read_text() == dashboard_json(), (
        "examples/grafana/servegate.json is out of date: regenerate it with "
        "`servegate grafana-dashboard > examples/grafana/servegate.json`"
    )


def test_the_cli_prints_or_writes_the_dashboard(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(cli, ["grafana-dashboard"])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == dashboard_json()
    assert json.loads(printed.stdout)["uid"] == "servegate"

    output = tmp_path / "servegate.json"
    written = runner.invoke(cli, ["grafana-dashboard", "--datasource-uid", "prom", "-o", str(output)])
    assert written.exit_code == 0, written.output
    assert output.read_text() == dashboard_json("prom")
    assert "import it in Grafana" in written.stderr


def test_the_cli_refuses_a_bad_datasource_uid() -> None:
    result = CliRunner().invoke(cli, ["grafana-dashboard", "--datasource-uid", "not a uid"])
    assert result.exit_code == 2
    assert "Invalid value for '--datasource-uid'" in result.output
    assert "not a Grafana data source uid" in result.output
