"""How the resource commands print: tables (rich on a terminal, aligned text otherwise), ages,
JSON/YAML dumps, the columns of `servegate get` and the text of `servegate describe`.

Everything here is a pure function of the objects the control API returns (and `now`), so it is
tested without a gateway.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NoReturn

import click

__all__ = [
    "ISVC_COLUMNS",
    "describe_resource",
    "dump",
    "fail",
    "field_lines",
    "format_age",
    "parse_time",
    "print_table",
    "rows_for",
    "table_text",
]

ISVC_COLUMNS = (
    "NAME",
    "URL",
    "READY",
    "PREV",
    "LATEST",
    "PREVROLLEDOUTREVISION",
    "LATESTREADYREVISION",
    "AGE",
)
#: what `get isvc -o wide` adds: the latest revision's replicas, and the nodes they run on.
ISVC_WIDE_COLUMNS = ("REPLICAS", "NODES")
TM_COLUMNS = ("NAME", "INFERENCESERVICE", "FRAMEWORK", "STORAGEURI")
IG_COLUMNS = ("NAME", "ROOT ROUTER", "READY")
# -- basics ---------------------------------------------------------------------------------------


def format_age(since: float | None, now: float) -> str:
    """kubectl-style age: 45s, 3m, 5h, 12d (`<unknown>` when the start is not known)."""
    if since is None:
        return "<unknown>"
    seconds = max(int(now - since), 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 120 * 60:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def parse_time(value: Any) -> float | None:
    """Epoch seconds from an epoch number or an RFC 3339 time (`2024-05-01T10:00:00Z`); else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def dump(value: Any, fmt: str) -> str:
    """`value` as pretty JSON or block YAML, keys in their original order."""
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip("\n")
    return json.dumps(value, indent=2, ensure_ascii=False)


def table_text(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: int = 0) -> str:
    """Columns aligned with three spaces between them, like kubectl; empty cells stay empty."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    pad = " " * indent
    return "\n".join(
        pad + "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table on stdout: rich's on a terminal, plain aligned text when piped (stable for scripts)."""
    rows = list(rows)
    text = table_text(headers, rows)
    if not sys.stdout.isatty():
        print(text)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 3, 0, 0))
    for header in headers:
        table.add_column(header, no_wrap=True)
    for row in rows:
        table.add_row(*("" if c is None else str(c) for c in row))
    # As wide as the table needs, like kubectl: a narrow terminal wraps lines rather than rich
    # squeezing URLs and revision names into columns too narrow to read.
    Console(width=max(len(line) for line in text.splitlines()) + 3).print(table)


# -- servegate get --------------------------------------------------------------------------------


def _conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list((obj.get("status") or {}).get("conditions") or [])


def _ready(obj: dict[str, Any]) -> str:
    return next((str(c.get("status")) for c in _conditions(obj) if c.get("type") == "Ready"), "Unknown")


def _traffic_split(predictor: dict[str, Any]) -> tuple[str, str]:
    """(PREV, LATEST): percent of traffic on older revisions and on the latest one ("" when none)."""
    prev = latest = None
    for entry in predictor.get("traffic") or []:
        percent = int(entry.get("percent") or 0)
        if entry.get("latestRevision"):
            latest = (latest or 0) + percent
        else:
            prev = (prev or 0) + percent
    return ("" if prev is None else str(prev)), ("" if latest is None else str(latest))


def _isvc_row(isvc: dict[str, Any], created: float | None, now: float) -> list[str]:
    status = isvc.get("status") or {}
    predictor = (status.get("components") or {}).get("predictor") or {}
    prev, latest = _traffic_split(predictor)
    return [
        isvc["metadata"]["name"],
        status.get("url") or "",
        _ready(isvc),
        prev,
        latest,
        predictor.get("previousRolledoutRevision") or "",
        predictor.get("latestReadyRevision") or "",
        format_age(created, now),
    ]


def _isvc_wide(isvc: dict[str, Any]) -> list[str]:
    """Ready/desired replicas of the predictor's latest revision, and the nodes of its ready replicas."""
    predictor = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
    pool = (predictor.get("replicas") or {}).get(predictor.get("latestCreatedRevision")) or {}
    if not pool:
        return ["-", "-"]
    ready = [r for r in pool.get("replicas", []) if r.get("state") == "Ready"]
    nodes = sorted({r["node"] for r in ready if r.get("node")})
    return [f"{pool.get('ready', 0)}/{pool.get('desired', 0)}", ",".join(nodes) or "-"]


def _replica_rows(component: dict[str, Any]) -> list[list[str]]:
    """One row per replica of every revision of a component: where it runs and how it is doing."""
    rows = []
    for revision, pool in sorted((component.get("replicas") or {}).items()):
        for r in pool.get("replicas", []):
            rows.append(
                [
                    r.get("id", ""),
                    revision,
                    r.get("state", ""),
                    r.get("node") or "-",
                    r.get("url") or "-",
                    str(r.get("restarts", 0)),
                    r.get("reason", ""),
                ]
            )
    return rows


def _tm_row(tm: dict[str, Any]) -> list[str]:
    spec = tm.get("spec") or {}
    model = spec.get("model") or {}
    return [
        tm["metadata"]["name"],
        spec.get("inferenceService", ""),
        model.get("framework", ""),
        model.get("storageUri", ""),
    ]


def _ig_row(ig: dict[str, Any]) -> list[str]:
    root = ((ig.get("spec") or {}).get("nodes") or {}).get("root") or {}
    return [ig["metadata"]["name"], root.get("routerType", ""), _ready(ig)]


def rows_for(
    plural: str,
    items: Sequence[dict[str, Any]],
    created: dict[str, float | None],
    now: float,
    wide: bool = False,
) -> tuple[Sequence[str], list[list[str]]]:
    """The columns and rows of `servegate get` for a resource type (`created`: name -> epoch seconds);
    `wide` adds where InferenceServices' replicas run."""
    if plural == "inferenceservices":
        rows = [_isvc_row(i, created.get(i["metadata"]["name"]), now) for i in items]
        if wide:
            rows = [row + _isvc_wide(i) for row, i in zip(rows, items, strict=True)]
            return (*ISVC_COLUMNS, *ISVC_WIDE_COLUMNS), rows
        return ISVC_COLUMNS, rows
    if plural == "trainedmodels":
        return TM_COLUMNS, [_tm_row(i) for i in items]
    return IG_COLUMNS, [_ig_row(i) for i in items]


# -- servegate describe ---------------------------------------------------------------------------


def field_lines(pairs: Iterable[tuple[str, Any]], indent: int = 0) -> list[str]:
    """`Key:   value` lines, values aligned; pairs whose value is None or "" are left out."""
    kept = [(k, v) for k, v in pairs if v is not None and v != ""]
    if not kept:
        return []
    width = max(len(k) for k, _ in kept) + 3
    return [" " * indent + f"{k + ':':<{width}}{v}".rstrip() for k, v in kept]


def _component_summary(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    """The lines worth reading of a predictor or transformer spec."""
    from serving.spec.isvc import FRAMEWORKS

    source = next((k for k in ("model", *FRAMEWORKS) if isinstance(spec.get(k), dict)), None)
    fields: dict[str, Any] = spec[source] if source else {}
    if source == "model":
        fmt = (fields.get("modelFormat") or {}).get("name")
    elif source is not None:
        fmt = source
    else:
        fmt = "custom container" if spec.get("containers") else None
    low = spec.get("minReplicas")
    low = 1 if low is None else low
    high = spec.get("maxReplicas") or max(low, 1)
    canary = spec.get("canaryTrafficPercent")
    batcher = spec.get("batcher")
    limits = (fields.get("resources") or {}).get("limits") or {}
    return [
        ("Format", fmt),
        ("Runtime", fields.get("runtime")),
        ("Storage URI", fields.get("storageUri")),
        ("Protocol", fields.get("protocolVersion") or "v1"),
        ("Replicas", f"min {low}, max {high}"),
        ("Canary traffic", f"{canary}%" if canary is not None else None),
        (
            "Batcher",
            f"maxBatchSize {batcher.get('maxBatchSize', 32)}, maxLatency {batcher.get('maxLatency', 5)}ms"
            if isinstance(batcher, dict)
            else None,
        ),
        ("Limits", ", ".join(f"{k}={v}" for k, v in limits.items()) or None),
    ]


def _revisions(component: dict[str, Any]) -> list[list[str]]:
    """One row per revision the status names: traffic, replicas (ready/desired, restarts), its roles
    and why it is not ready (the pool's reason, else its first replica's)."""
    replicas: dict[str, Any] = component.get("replicas") or {}
    traffic = {t.get("revisionName"): t.get("percent") for t in component.get("traffic") or []}
    roles = {
        "latestCreatedRevision": "latest",
        "latestReadyRevision": "ready",
        "latestRolledoutRevision": "rolled out",
        "previousRolledoutRevision": "previous",
    }
    names = {component.get(k) for k in roles} | set(replicas) | set(traffic)
    rows = []
    for name in sorted(n for n in names if n):
        pool = replicas.get(name) or {}
        marks = [role for key, role in roles.items() if component.get(key) == name]
        if pool and not pool.get("schedulable", True):
            marks.append("not schedulable")
        rows.append(
            [
                name,
                f"{traffic[name]}%" if name in traffic else "0%",
                f"{pool.get('ready', 0)}/{pool.get('desired', 0)}" if pool else "-",
                str(pool.get("restarts", 0)) if pool else "-",
                ", ".join(marks),
                pool.get("reason")
                or next((r["reason"] for r in pool.get("replicas", []) if r.get("reason")), ""),
            ]
        )
    return rows


def _registry_models(component: dict[str, Any]) -> dict[str, str]:
    """Revision -> the `registry://NAME/VERSION` it serves, when the component serves registry models."""
    uris = {name: pool.get("storageUri") or "" for name, pool in (component.get("replicas") or {}).items()}
    uris |= {t["revisionName"]: t.get("storageUri") or "" for t in component.get("traffic") or []}
    if not any(uri.startswith("registry://") for uri in uris.values()):
        return {}
    return {name: uri.removeprefix("registry://") for name, uri in uris.items()}


def _isvc_sections(isvc: dict[str, Any]) -> list[str]:
    spec = isvc.get("spec") or {}
    status = isvc.get("status") or {}
    lines: list[str] = []
    for kind in ("predictor", "transformer"):
        if isinstance(spec.get(kind), dict):
            lines += ["", f"{kind.capitalize()}:", *field_lines(_component_summary(spec[kind]), 2)]
    experiment = spec.get("experiment")
    if isinstance(experiment, dict):
        variants = ", ".join(
            f"{v.get('name')} ({v.get('weight')}%"
            + (
                f" -> {v.get('service') or v.get('revision')}"
                if v.get("service") or v.get("revision")
                else ""
            )
            + ")"
            for v in experiment.get("variants") or []
        )
        lines += [
            "",
            "Experiment:",
            *field_lines([("Variants", variants), ("Sticky by", experiment.get("stickyBy"))], 2),
        ]
    shadow = spec.get("shadow")
    if isinstance(shadow, dict):
        target = shadow.get("service") or shadow.get("revision")
        lines += [
            "",
            "Shadow:",
            *field_lines([("Percent", f"{shadow.get('percent')}%"), ("Target", target)], 2),
        ]

    conditions = _conditions(isvc)
    lines += ["", "Conditions:"]
    if conditions:
        rows = [
            [c.get("type"), c.get("status"), c.get("reason", ""), c.get("message", "")] for c in conditions
        ]
        lines.append(table_text(("TYPE", "STATUS", "REASON", "MESSAGE"), rows, indent=2))
    else:
        lines.append("  <none>")

    for kind, component in (status.get("components") or {}).items():
        lines += ["", f"Revisions ({kind}):"]
        rows = _revisions(component)
        if rows:
            headers = ["REVISION", "TRAFFIC", "READY/DESIRED", "RESTARTS", "ROLE", "REASON"]
            pinned = _registry_models(component)
            if pinned:  # a service following a registry alias: which version each revision serves
                headers.insert(1, "MODEL")
                rows = [[row[0], pinned.get(row[0], ""), *row[1:]] for row in rows]
            lines.append(table_text(headers, rows, indent=2))
        else:
            lines.append("  <none>")
        if replicas := _replica_rows(component):
            lines += ["", f"Replicas ({kind}):"]
            headers = ["REPLICA", "REVISION", "STATE", "NODE", "ADDRESS", "RESTARTS", "REASON"]
            lines.append(table_text(headers, replicas, indent=2))

    model = status.get("modelStatus")
    if isinstance(model, dict):
        states = model.get("states") or {}
        copies = model.get("copies") or {}
        failure = model.get("lastFailureInfo") or {}
        lines += [
            "",
            "Model status:",
            *field_lines(
                [
                    ("State", f"{states.get('activeModelState')} (target {states.get('targetModelState')})"),
                    ("Transition", model.get("transitionStatus")),
                    (
                        "Copies",
                        f"{copies.get('totalCopies', 0)} total, {copies.get('failedCopies', 0)} failed",
                    ),
                    (
                        "Last failure",
                        f"{failure.get('reason')}: {failure.get('message')}" if failure else None,
                    ),
                ],
                2,
            ),
        ]
    return lines


def describe_resource(kind: str, obj: dict[str, Any], events: Sequence[dict[str, Any]], now: float) -> str:
    """`servegate describe`: what a resource is, how it is doing, and what happened to it."""
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    lines = field_lines(
        [
            ("Name", metadata.get("name")),
            ("Namespace", metadata.get("namespace")),
            ("Kind", kind),
            ("Generation", metadata.get("generation")),
            ("URL", status.get("url")),
            ("Ready", _ready(obj) if status else None),
        ]
    )
    if kind == "InferenceService":
        lines += _isvc_sections(obj)
    else:
        lines += ["", "Spec:", *("  " + line for line in dump(obj.get("spec") or {}, "yaml").splitlines())]
    lines += ["", "Events:"]
    if events:
        rows = [
            [
                e.get("type", ""),
                e.get("reason", ""),
                format_age(parse_time(e.get("time")), now),
                e.get("actor") or "-",  # the token that asked; "-" for what the controller did itself
                e.get("message", ""),
            ]
            for e in events
        ]
        lines.append(table_text(("TYPE", "REASON", "AGE", "BY", "MESSAGE"), rows, indent=2))
    else:
        lines.append("  <none>")
    return "\n".join(lines)


def fail(message: str, details: Sequence[object] = ()) -> NoReturn:
    """`error: MESSAGE` (and each detail, indented) on stderr, then exit status 1."""
    click.echo(f"error: {message}", err=True)
    for detail in details:
        click.echo(f"  {detail}", err=True)
    click.get_current_context().exit(1)
