"""How `servegate registry` prints: the tables of `list`, `show` and `history`, and the text of one
model or one version in detail.

Pure functions of the registry's dataclasses (and `now`), tested without a registry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from serving.cli._output import field_lines, format_age, table_text

if TYPE_CHECKING:
    from serving.registry.types import AuditEntry, ModelVersion, RegisteredModel

__all__ = [
    "HISTORY_COLUMNS",
    "MODEL_COLUMNS",
    "VERSION_COLUMNS",
    "describe_model",
    "describe_version",
    "format_size",
    "format_time",
    "history_rows",
    "model_rows",
    "registered_line",
    "version_rows",
]

MODEL_COLUMNS = ("NAME", "LATEST", "ALIASES", "UPDATED")
VERSION_COLUMNS = (
    "VERSION",
    "FORMAT",
    "STATUS",
    "TRUSTED",
    "ALIASES",
    "SHA256",
    "SIZE",
    "METRICS",
    "CREATED",
)
HISTORY_COLUMNS = ("TIME", "ACTOR", "ACTION", "DETAILS")
_SHORT_SHA = 12


def format_size(size: int) -> str:
    """Bytes in binary units, one decimal: 812B, 3.4KiB, 120.0MiB."""
    if size < 1024:
        return f"{size}B"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}TiB"


def format_time(epoch: float) -> str:
    """Local wall-clock time to the second, like `git log --date=iso` without the zone."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _pairs(values: Mapping[str, Any], separator: str = ", ") -> str:
    return separator.join(f"{k}={_value(v)}" for k, v in values.items())


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def registered_line(v: ModelVersion) -> str:
    """What `register` prints: `registered mlp version 3 (sha256 0123456789ab…)`."""
    return f"registered {v.model} version {v.version} (sha256 {v.sha256[:_SHORT_SHA]}…)"


def model_rows(models: Iterable[RegisteredModel], now: float) -> list[list[str]]:
    """`list`: one row per model under MODEL_COLUMNS."""
    return [
        [m.name, str(m.latest_version), _pairs(m.aliases, ","), format_age(m.updated, now)] for m in models
    ]


def version_rows(versions: Iterable[ModelVersion], now: float) -> list[list[str]]:
    """`show NAME`: one row per version under VERSION_COLUMNS."""
    return [
        [
            str(v.version),
            v.format,
            v.status,
            _yes(v.trusted),
            ",".join(v.aliases),
            v.sha256[:_SHORT_SHA],
            format_size(v.size),
            _pairs(v.metrics, ","),
            format_age(v.created, now),
        ]
        for v in versions
    ]


def history_rows(entries: Iterable[AuditEntry]) -> list[list[str]]:
    """`history`: one row per change under HISTORY_COLUMNS."""
    return [[format_time(e.time), e.actor, e.action, _pairs(e.details)] for e in entries]


def _section(title: str, values: Mapping[str, Any]) -> list[str]:
    """A titled block of `key: value` lines, `<none>` when empty."""
    lines = ["", f"{title}:"]
    return lines + (field_lines(((k, _value(v)) for k, v in values.items()), 2) or ["  <none>"])


def _when(epoch: float, now: float) -> str:
    return f"{format_time(epoch)} ({format_age(epoch, now)} ago)"


def describe_model(model: RegisteredModel, versions: Sequence[ModelVersion], now: float) -> str:
    """`show NAME`: the model, its aliases and gates, and a table of its versions."""
    lines = field_lines(
        [
            ("Name", model.name),
            ("Description", model.description),
            ("Created", _when(model.created, now)),
            ("Updated", _when(model.updated, now)),
            ("Latest version", model.latest_version),
        ]
    )
    lines += _section("Aliases", {alias: version for alias, version in model.aliases.items()})
    gates: dict[str, list[str]] = {}
    for gate in model.gates:
        gates.setdefault(gate.alias, []).append(str(gate))
    lines += _section("Gates", {alias: ", ".join(each) for alias, each in gates.items()})
    lines += ["", "Versions:"]
    if versions:
        lines.append(table_text(VERSION_COLUMNS, version_rows(versions, now), indent=2))
    else:
        lines.append("  <none>")
    return "\n".join(lines)


def _signature(signature: Mapping[str, Any] | None) -> list[str]:
    lines = ["", "Signature:"]
    rows = [
        [role, str(t.get("name", "")), str(t.get("datatype", "")), _value(t.get("shape", ""))]
        for role, key in (("input", "inputs"), ("output", "outputs"))
        for t in (signature or {}).get(key) or []
    ]
    if not rows:
        return [*lines, "  <none>"]
    return [*lines, table_text(("", "NAME", "DATATYPE", "SHAPE"), rows, indent=2)]


def describe_version(v: ModelVersion, now: float) -> str:
    """`show NAME/VERSION`: every field of one version."""
    lines = field_lines(
        [
            ("Model", v.model),
            ("Version", v.version),
            ("URI", v.uri),
            ("Status", v.status),
            ("Trusted", _yes(v.trusted)),
            ("Aliases", ", ".join(v.aliases) or "<none>"),
            ("Format", v.format),
            ("Entry", v.entry),
            ("Artifact", f"{v.artifact_name} ({v.artifact_kind})"),
            ("Size", f"{format_size(v.size)} ({v.size} bytes)"),
            ("SHA256", v.sha256),
            ("Created", _when(v.created, now)),
            ("Created by", v.created_by),
            ("Description", v.description),
        ]
    )
    lines += _section("Source", v.source)
    lines += _signature(v.signature)
    lines += _section("Metrics", v.metrics)
    lines += _section("Params", v.params)
    lines += _section("Tags", v.tags)
    return "\n".join(lines)
