"""The Grafana dashboard over servegate's Prometheus metrics (`servegate grafana-dashboard`, and
`examples/grafana/servegate.json`, which is its output).

A pure function of its one option: panels are declared below as rows of (title, kind, width, PromQL
targets), and laid out on Grafana's 24-column grid in that order. Every query selects on the
dashboard's variables (`$namespace`, `$service`, `$revision`) where its series carry those labels:
gateway and autoscaler series have `service` and `revision` (no `namespace`: a gateway's services
are unique by name), replica series get `namespace`, `service`, `revision` and `replica` from the
targets file `servegate up` keeps (serving/monitoring.py); registry and pipeline series have none.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from serving.monitoring import REPLICA_JOB

__all__ = ["DASHBOARD_UID", "DATASOURCE_INPUT", "dashboard_json", "grafana_dashboard"]

DASHBOARD_UID = "servegate"
#: the import-time input Grafana asks for (a Prometheus data source), and what replaces it.
DATASOURCE_INPUT = "DS_PROMETHEUS"
SCHEMA_VERSION = 39
_UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
#: every panel's data source: the dashboard's `datasource` variable.
_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_WIDTH = 24

# Label selectors of the two tiers.
_GATEWAY = 'service=~"$service", revision=~"$revision"'
_REPLICA = f'job="{REPLICA_JOB}", namespace=~"$namespace", service=~"$service", revision=~"$revision"'
_RATE = "[$__rate_interval]"


def _rate(selector: str) -> str:
    return f"rate({selector}{_RATE})"


def _quantile(q: float, bucket: str, labels: str, by: str = "") -> str:
    """The q-quantile of histogram `bucket` (its `_bucket` series) per `by` labels (none: overall)."""
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) ({_rate(f'{bucket}_bucket{{{labels}}}')}))"


@dataclass(frozen=True, slots=True)
class _Target:
    expr: str
    legend: str = ""
    #: a table's one value per series, now (an instant query), instead of a range.
    instant: bool = False


@dataclass(frozen=True, slots=True)
class _Panel:
    title: str
    description: str
    targets: tuple[_Target, ...]
    unit: str = "short"
    #: timeseries, stat, or table.
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    #: timeseries only: bars for counts of events, stacked areas for parts of a whole.
    style: str = "line"


_REQUESTS = f"servegate_gateway_requests_total{{{_GATEWAY}}}"
_ERRORS = f'servegate_gateway_requests_total{{{_GATEWAY}, status!="ok"}}'


_OVERVIEW = (
    _Panel(
        "Requests/s",
        "Requests through the gateway, all selected services.",
        (_Target(f"sum({_rate(_REQUESTS)})"),),
        unit="reqps",
        kind="stat",
        width=6,
        height=4,
    ),
    _Panel(
        "Error ratio",
        "Share of the gateway's answers that were not ok.",
        (_Target(f"(sum({_rate(_ERRORS)}) or vector(0)) / sum({_rate(_REQUESTS)})"),),
        unit="percentunit",
        kind="stat",
        width=6,
        height=4,
    ),
    _Panel(
        "p99 latency",
        "99th percentile of the gateway's request time (queueing included).",
        (_Target(_quantile(0.99, "servegate_gateway_request_duration_seconds", _GATEWAY)),),
        unit="s",
        kind="stat",
        width=6,
        height=4,
    ),
    _Panel(
        "Replicas ready / desired",
        "Replicas taking traffic, and replicas asked for, over the selected revisions.",
        (
            _Target(f"sum(servegate_gateway_ready_replicas{{{_GATEWAY}}})", "ready"),
            _Target(f"sum(servegate_gateway_desired_replicas{{{_GATEWAY}}})", "desired"),
        ),
        kind="stat",
        width=6,
        height=4,
    ),
)

_TRAFFIC = (
    _Panel(
        "Request rate by revision",
        "Requests per second through the gateway, per service and revision.",
        (_Target(f"sum by (service, revision) ({_rate(_REQUESTS)})", "{{service}} {{revision}}"),),
        unit="reqps",
    ),
    _Panel(
        "Errors by status",
        "Failed requests per second by outcome (invalid_input, not_found, payload_too_large, "
        "model_failure, unavailable, timeout).",
        (
            _Target(
                f"sum by (service, revision, status) ({_rate(_ERRORS)})",
                "{{service}} {{revision}} {{status}}",
            ),
        ),
        unit="reqps",
    ),
    _Panel(
        "Latency p50 / p90 / p99",
        "Time from a request's arrival at the gateway to its answer, queueing included.",
        tuple(
            _Target(
                _quantile(q, "servegate_gateway_request_duration_seconds", _GATEWAY, "service, revision"),
                f"{{{{service}}}} {{{{revision}}}} p{round(q * 100)}",
            )
            for q in (0.5, 0.9, 0.99)
        ),
        unit="s",
    ),
    _Panel(
        "Request rate by variant and protocol",
        "Requests per second per A/B variant (empty outside an experiment) and protocol (v1, v2, grpc).",
        (
            _Target(
                f"sum by (service, variant, protocol) ({_rate(_REQUESTS)})",
                "{{service}} {{variant}} {{protocol}}",
            ),
        ),
        unit="reqps",
    ),
)

_QUEUES = (
    _Panel(
        "Queue depth",
        "Requests waiting at the gateway for a replica with room (or for a replica to start).",
        (
            _Target(
                f"sum by (service, revision) (servegate_gateway_queue_depth{{{_GATEWAY}}})",
                "{{service}} {{revision}}",
            ),
        ),
        width=8,
    ),
    _Panel(
        "In flight",
        "Requests being served: at the gateway per service, sent on to replicas per revision, and "
        "inside the replicas.",
        (
            _Target(
                'sum by (service) (servegate_gateway_inflight_requests{service=~"$service"})',
                "{{service}} at the gateway",
            ),
            _Target(
                f"sum by (service, revision) (servegate_gateway_outstanding_requests{{{_GATEWAY}}})",
                "{{revision}} sent to replicas",
            ),
            _Target(
                f"sum by (service, revision) (servegate_inflight_requests{{{_REPLICA}}})",
                "{{revision}} in replicas",
            ),
        ),
        width=8,
    ),
    _Panel(
        "Replica queue wait and compute, p99",
        "Inside the replicas: time a request waited for the model (batch forming, busy instances), "
        "and time one model call took.",
        (
            _Target(
                _quantile(0.99, "servegate_queue_duration_seconds", _REPLICA, "service, revision"),
                "{{revision}} queue p99",
            ),
            _Target(
                _quantile(0.99, "servegate_compute_duration_seconds", _REPLICA, "service, revision"),
                "{{revision}} compute p99",
            ),
        ),
        unit="s",
        width=8,
    ),
)

_SCALING = (
    _Panel(
        "Replicas: desired vs ready",
        "Replicas the controller asked for (what the autoscaler decided) and replicas taking traffic.",
        (
            _Target(
                f"sum by (service, revision) (servegate_gateway_desired_replicas{{{_GATEWAY}}})",
                "{{revision}} desired",
            ),
            _Target(
                f"sum by (service, revision) (servegate_gateway_ready_replicas{{{_GATEWAY}}})",
                "{{revision}} ready",
            ),
        ),
    ),
    _Panel(
        "Autoscaler: observed vs target",
        "The scaling metric per ready replica (stable-window average) against what one replica "
        "should carry (utilization applied).",
        (
            _Target(
                f"max by (service, revision, metric) (servegate_autoscaler_observed{{{_GATEWAY}}})",
                "{{revision}} observed {{metric}}",
            ),
            _Target(
                f"max by (service, revision) (servegate_autoscaler_target{{{_GATEWAY}}})",
                "{{revision}} target",
            ),
        ),
    ),
    _Panel(
        "Autoscaler decisions",
        "Decisions that changed a revision's size, up or down ('hold' decisions are left out).",
        (
            _Target(
                "sum by (service, revision, direction) (increase(servegate_autoscaler_decisions_total"
                f'{{{_GATEWAY}, direction!="hold"}}{_RATE}))',
                "{{revision}} {{direction}}",
            ),
        ),
        width=8,
        style="bars",
    ),
    _Panel(
        "Autoscaler panic mode",
        "1 while a revision scales on the short window (and never down).",
        (
            _Target(
                f"max by (service, revision) (servegate_autoscaler_panic{{{_GATEWAY}}})",
                "{{service}} {{revision}}",
            ),
        ),
        width=8,
    ),
    _Panel(
        "Unschedulable",
        "1 while the engine cannot place a revision's replicas (GPUs, images).",
        (
            _Target(
                f"max by (service, revision) (servegate_gateway_unschedulable{{{_GATEWAY}}})",
                "{{service}} {{revision}}",
            ),
        ),
        width=8,
    ),
)

_BY_REPLICA = "service, revision, replica"
_RESOURCES = (
    _Panel(
        "Replica CPU",
        "CPU time per second of each replica process, in cores.",
        (
            _Target(
                f"sum by ({_BY_REPLICA}) ({_rate(f'process_cpu_seconds_total{{{_REPLICA}}}')})",
                "{{revision}} {{replica}}",
            ),
        ),
        width=6,
    ),
    _Panel(
        "Replica memory",
        "Resident memory of each replica process.",
        (
            _Target(
                f"sum by ({_BY_REPLICA}) (process_resident_memory_bytes{{{_REPLICA}}})",
                "{{revision}} {{replica}}",
            ),
        ),
        unit="bytes",
        width=6,
    ),
    _Panel(
        "GPU utilization",
        "Share of time a kernel ran on each replica's GPUs (NVML). Empty for replicas without GPUs.",
        (
            _Target(
                f"max by ({_BY_REPLICA}, gpu) (servegate_gpu_utilization_percent{{{_REPLICA}}})",
                "{{replica}} GPU {{gpu}}",
            ),
        ),
        unit="percent",
        width=6,
    ),
    _Panel(
        "GPU memory",
        "GPU memory in use, and each GPU's total (NVML). Empty for replicas without GPUs.",
        (
            _Target(
                f"max by ({_BY_REPLICA}, gpu) (servegate_gpu_memory_used_bytes{{{_REPLICA}}})",
                "{{replica}} GPU {{gpu}} used",
            ),
            _Target(
                f"max by ({_BY_REPLICA}, gpu) (servegate_gpu_memory_total_bytes{{{_REPLICA}}})",
                "{{replica}} GPU {{gpu}} total",
            ),
        ),
        unit="bytes",
        width=6,
    ),
)


def _batch_average() -> str:
    by = "service, revision, model"
    total = _rate(f"servegate_batch_size_sum{{{_REPLICA}}}")
    calls = _rate(f"servegate_batch_size_count{{{_REPLICA}}}")
    return f"sum by ({by}) ({total}) / sum by ({by}) ({calls})"


_MODELS = (
    _Panel(
        "Batch size",
        "Rows per model call: the average, and the 90th percentile.",
        (
            _Target(_batch_average(), "{{revision}} {{model}} average"),
            _Target(
                _quantile(0.9, "servegate_batch_size", _REPLICA, "service, revision, model"),
                "{{revision}} {{model}} p90",
            ),
        ),
        width=6,
    ),
    _Panel(
        "Model load states",
        "Models in each state (LOADING, READY, FAILED, UNLOADING, UNAVAILABLE), over the selected replicas.",
        (_Target(f"sum by (state) (servegate_model_state{{{_REPLICA}}})", "{{state}}"),),
        width=6,
        style="stacked",
    ),
    _Panel(
        "Replica requests by model and status",
        "Requests per second the replicas answered, per model and outcome.",
        (
            _Target(
                f"sum by (service, model, status) ({_rate(f'servegate_requests_total{{{_REPLICA}}}')})",
                "{{service}} {{model}} {{status}}",
            ),
        ),
        unit="reqps",
        width=6,
    ),
    _Panel(
        "Replica latency p50 / p99",
        "Inside the replicas: from a decoded request to an encoded response.",
        tuple(
            _Target(
                _quantile(q, "servegate_request_duration_seconds", _REPLICA, "service, revision"),
                f"{{{{revision}}}} p{round(q * 100)}",
            )
            for q in (0.5, 0.99)
        ),
        unit="s",
        width=6,
    ),
)

_ACTIVITY = (
    _Panel(
        "Registry: versions per model",
        "Versions registered of each model (the highest version number; archived ones included).",
        (_Target("max by (model) (servegate_registry_model_versions)", "{{model}}"),),
        width=5,
    ),
    _Panel(
        "Registry changes",
        "Changes to the registry (registrations, alias moves, gates, archiving, trust), from its audit log.",
        (_Target(f"sum(increase(servegate_registry_changes_total{_RATE}))", "changes"),),
        width=4,
        style="bars",
    ),
    _Panel(
        "Registry aliases",
        "The version each alias points at now.",
        (_Target("max by (model, alias) (servegate_registry_alias_version)", instant=True),),
        kind="table",
        width=5,
    ),
    _Panel(
        "Pipeline runs by status",
        "Runs recorded in the pipelines' metadata store, per pipeline and status.",
        (
            _Target(
                "sum by (pipeline, status) (servegate_pipeline_runs)",
                "{{pipeline}} {{status}}",
            ),
        ),
        width=5,
    ),
    _Panel(
        "Since the last pipeline run",
        "Time since each pipeline's latest run started.",
        (
            _Target(
                "time() - max by (pipeline) (servegate_pipeline_last_run_timestamp_seconds)",
                instant=True,
            ),
        ),
        unit="s",
        kind="table",
        width=5,
    ),
)

#: the rows, top to bottom.
_ROWS: tuple[tuple[str, tuple[_Panel, ...]], ...] = (
    ("Overview", _OVERVIEW),
    ("Traffic", _TRAFFIC),
    ("Queues and in-flight requests", _QUEUES),
    ("Replicas and autoscaling", _SCALING),
    ("Replica resources", _RESOURCES),
    ("Models", _MODELS),
    ("Registry and pipelines", _ACTIVITY),
)


def grafana_dashboard(datasource_uid: str | None = None) -> dict[str, Any]:
    """The dashboard's JSON model.

    datasource_uid: the uid of the Prometheus data source its panels read (for provisioning from a
    file); None: Grafana asks for one at import (the `DS_PROMETHEUS` input).
    Raises ValueError for a uid Grafana would not accept.
    """
    if datasource_uid is not None and not _UID.match(datasource_uid):
        raise ValueError(
            f"'{datasource_uid}' is not a Grafana data source uid (1 to 40 letters, digits, '-' or '_')"
        )
    current = datasource_uid or "${" + DATASOURCE_INPUT + "}"
    dashboard: dict[str, Any] = {
        "annotations": {"list": [_BUILTIN_ANNOTATIONS]},
        "description": "servegate: gateway traffic, latency, queues, replicas, autoscaling, models, "
        "registry and pipelines (from `servegate grafana-dashboard`).",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": _layout(_ROWS),
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["servegate"],
        "templating": {"list": _variables(current)},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "servegate",
        "uid": DASHBOARD_UID,
        "version": 1,
    }
    if datasource_uid is None:
        dashboard["__inputs"] = [
            {
                "name": DATASOURCE_INPUT,
                "label": "Prometheus",
                "description": "The Prometheus that scrapes servegate (`servegate prometheus-config`).",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ]
        dashboard["__requires"] = [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            *(
                {"type": "panel", "id": kind, "name": kind.capitalize(), "version": ""}
                for kind in ("stat", "table", "timeseries")
            ),
        ]
    return dashboard


def dashboard_json(datasource_uid: str | None = None) -> str:
    """`grafana_dashboard` as the command prints it: indented, keys sorted (stable diffs)."""
    return json.dumps(grafana_dashboard(datasource_uid), indent=2, sort_keys=True) + "\n"


# -- building blocks -------------------------------------------------------------------------------

_BUILTIN_ANNOTATIONS = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


def _variables(datasource: str) -> list[dict[str, Any]]:
    source = {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {"selected": False, "text": datasource, "value": datasource},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }
    return [
        source,
        _query_variable(
            "namespace",
            "Namespace",
            f'label_values(servegate_model_state{{job="{REPLICA_JOB}"}}, namespace)',
            "Selects the replicas' panels (gateway series carry no namespace).",
        ),
        _query_variable(
            "service", "Service", "label_values(servegate_gateway_desired_replicas, service)", ""
        ),
        _query_variable(
            "revision",
            "Revision",
            'label_values(servegate_gateway_desired_replicas{service=~"$service"}, revision)',
            "",
        ),
    ]


def _query_variable(name: str, label: str, query: str, description: str) -> dict[str, Any]:
    """A multi-select variable filled by `query`, with All as `.*` (so All also matches a series
    that lacks the label)."""
    variable = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": _DATASOURCE,
        "definition": query,
        "query": query,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "options": [],
        "refresh": 2,  # on time range change: services and revisions come and go
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
    }
    if description:
        variable["description"] = description
    return variable


def _layout(rows: tuple[tuple[str, tuple[_Panel, ...]], ...]) -> list[dict[str, Any]]:
    """Rows and their panels on the 24-column grid, left to right, wrapping; ids from 1."""
    out: list[dict[str, Any]] = []
    y = 0
    for title, panels in rows:
        out.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": _WIDTH, "x": 0, "y": y},
                "id": len(out) + 1,
                "panels": [],
                "title": title,
                "type": "row",
            }
        )
        y += 1
        x = line_height = 0
        for panel in panels:
            if x + panel.width > _WIDTH:
                x, y, line_height = 0, y + line_height, 0
            out.append(_panel(panel, len(out) + 1, {"h": panel.height, "w": panel.width, "x": x, "y": y}))
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return out


def _panel(panel: _Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    targets = [
        {
            "datasource": _DATASOURCE,
            "editorMode": "code",
            "expr": target.expr,
            "format": "table" if target.instant else "time_series",
            "instant": target.instant,
            "legendFormat": target.legend or "__auto",
            "range": not target.instant,
            "refId": chr(ord("A") + i),
        }
        for i, target in enumerate(panel.targets)
    ]
    out: dict[str, Any] = {
        "datasource": _DATASOURCE,
        "description": panel.description,
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "gridPos": grid,
        "id": panel_id,
        "targets": targets,
        "title": panel.title,
        "type": panel.kind,
    }
    if panel.kind == "timeseries":
        out["fieldConfig"]["defaults"]["custom"] = _series_style(panel.style)
        out["options"] = {
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "stat":
        out["options"] = {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        }
    else:  # a table of one value per series: the labels as columns, the time left out
        out["options"] = {"cellHeight": "sm", "showHeader": True}
        out["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True}}}]
    return out


def _series_style(style: str) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "line",
        "fillOpacity": 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "none"},
    }
    if style == "bars":
        custom |= {"drawStyle": "bars", "fillOpacity": 60}
    elif style == "stacked":
        custom |= {"fillOpacity": 40, "stacking": {"group": "A", "mode": "normal"}}
    return custom
