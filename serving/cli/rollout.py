"""`servegate rollout status / pause / resume / abort`: an InferenceService's rollout strategy
(`spec.rollout`) as it walks its canary through its stages, and a person's hand on it.

Every command takes the gateway options of `servegate get` (`--url`, `--token`, ...) and reports
errors as they do: `error: MESSAGE` on stderr and exit status 1 (an unknown service, one without a
strategy, or nothing to pause, resume or abort).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from serving.cli._options import output_option
from serving.cli._output import dump
from serving.cli.resources import gateway_client, gateway_options

if TYPE_CHECKING:
    from rich.console import Group

__all__ = ["check_rows", "figures_text", "rollout_group", "span", "stage_rows", "stage_text", "status_fields"]

STAGE_COLUMNS = ("", "STAGE", "TRAFFIC", "HOLD")
CHECK_COLUMNS = ("CHECK", "OUTCOME", "FIGURES", "P-VALUE", "MESSAGE")
#: the current stage's mark in the stages table (kubectl's mark of the current context).
CURRENT = "*"
_OUTCOME_STYLES = {"pass": "green", "fail": "bold red", "pending": "yellow"}
_STATE_STYLES = {
    "running": "yellow",
    "paused": "magenta",
    "waiting": "cyan",
    "succeeded": "green",
    "aborted": "bold red",
}


# -- the text of `rollout status`: pure functions of the gateway's answer and `now` ----------------


def span(seconds: float) -> str:
    """A duration, compactly: 45s, 2m, 1m30s, 3h, 1h5m."""
    whole = max(int(seconds), 0)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    hours, rest = divmod(whole // 60, 60)
    return f"{hours}h{rest}m" if rest else f"{hours}h"


def _traffic(stage: Mapping[str, Any]) -> str:
    """A stage's traffic as `progressive.Stage` says it: `shadow 10%` (mirrored) or `25% live`."""
    return f"shadow {stage['percent']}%" if stage.get("kind") == "shadow" else f"{stage['percent']}% live"


def stage_text(status: Mapping[str, Any], now: float) -> str:
    """`2/4: 25% live, held 1m of 2m` (the hold only while the stage is running or paused); `-` when
    there is no current stage."""
    index, stages = status.get("stage"), status.get("stages") or []
    if index is None or not 0 <= index < len(stages):
        return "-"
    stage = stages[index]
    text = f"{index + 1}/{len(stages)}: {_traffic(stage)}"
    started = status.get("stageStarted")
    if started is not None and status.get("state") in ("running", "paused"):
        text += f", held {span(now - started)} of {span(stage.get('holdSeconds') or 0)}"
    return text


def status_fields(status: Mapping[str, Any], now: float) -> list[tuple[str, str]]:
    """The header of `rollout status`: (label, value) pairs."""
    canary, stable = status.get("canary"), status.get("stable")
    traffic = status.get("traffic") or {}
    return [
        ("Service", str(status.get("service", ""))),
        ("Canary", f"{canary} vs stable {stable}" if canary else "none"),
        ("State", str(status.get("state", ""))),
        ("Stage", stage_text(status, now)),
        ("Traffic", f"{traffic.get('live', 0)}% live, {traffic.get('shadow', 0)}% mirrored"),
        ("Failures", f"{status.get('failures', 0)}/{status.get('failureBudget', 0)}"),
        ("Reason", str(status.get("reason") or "")),
    ]


def stage_rows(status: Mapping[str, Any]) -> list[list[str]]:
    """One row per stage: the current one's mark, its number, its traffic and how long it holds."""
    current = status.get("stage")
    return [
        [CURRENT if i == current else "", str(i + 1), _traffic(stage), span(stage.get("holdSeconds") or 0)]
        for i, stage in enumerate(status.get("stages") or [])
    ]


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def figures_text(figures: Mapping[str, Any]) -> str:
    """A check's figures on one line: `canaryRate=0.012 stableRate=0.01 ...` (no value left out)."""
    return " ".join(f"{key}={_number(value)}" for key, value in figures.items() if value is not None)


def check_rows(status: Mapping[str, Any]) -> list[list[str]]:
    """One row per check of the current stage's last look."""
    return [
        [
            str(c.get("check", "")),
            str(c.get("outcome", "")),
            figures_text(c.get("figures") or {}),
            "-" if c.get("pValue") is None else f"{c['pValue']:.2g}",
            str(c.get("message", "")),
        ]
        for c in status.get("checks") or []
    ]


def status_view(status: Mapping[str, Any], now: float) -> Group:
    """`rollout status` for people: the header, the stages (the current one marked) and the checks,
    state and outcomes coloured (rich leaves the colours out when the output is not a terminal)."""
    from rich.console import Group
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    def table(headers: tuple[str, ...], rows: list[list[str]], styled: int | None = None) -> Table:
        grid = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 3, 0, 0))
        for header in headers:
            grid.add_column(header, no_wrap=True)
        for row in rows:
            # Text, not markup: a message or revision name with [brackets] is shown as it is.
            cells = [Text(cell) for cell in row]
            if styled is not None:
                cells[styled].stylize(_OUTCOME_STYLES.get(row[styled], ""))
            grid.add_row(*cells)
        return grid

    header = Table.grid(padding=(0, 3, 0, 0))
    header.add_column(no_wrap=True)
    header.add_column(no_wrap=True)
    for label, value in status_fields(status, now):
        style = _STATE_STYLES.get(value, "") if label == "State" else ""
        header.add_row(f"{label}:", Text(value, style=style))
    checks: Any = table(CHECK_COLUMNS, rows, styled=1) if (rows := check_rows(status)) else Text("<none>")
    return Group(
        header,
        Text(),
        Text("Stages:", style="bold"),
        Padding(table(STAGE_COLUMNS, stage_rows(status)), (0, 0, 0, 2)),
        Text(),
        Text("Checks:", style="bold"),
        Padding(checks, (0, 0, 0, 2)),
    )


def _print(view: Group) -> None:
    from rich.console import Console

    # As wide as the tables need, like `print_table`: long messages are not squeezed into columns.
    measuring = Console(highlight=False)
    width = measuring.measure(view, options=measuring.options.update_width(100_000)).maximum
    console = Console(highlight=False, width=width)
    with console.capture() as captured:
        console.print(view)
    # rich pads every line to the table's width; piped output keeps no trailing blanks.
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


# -- the commands ---------------------------------------------------------------------------------


@click.group("rollout")
def rollout_group() -> None:
    """Follow an InferenceService's rollout strategy, and pause, resume or abort it.

    \b
    servegate rollout status iris
    servegate rollout pause iris
    servegate rollout resume iris
    servegate rollout abort iris
    """


@rollout_group.command()
@click.argument("name")
@output_option("Text for people, or the rollout as JSON or YAML.")
@gateway_options
def status(name: str, output: str, url: str | None) -> None:
    """Show the rollout of InferenceService NAME: canary and stable, state, stages and the checks."""
    with gateway_client(url) as client:
        found = client.rollout_status(name)
    if output != "table":
        click.echo(dump(found, output))
    else:
        _print(status_view(found, time.time()))


@rollout_group.command()
@click.argument("name")
@gateway_options
def pause(name: str, url: str | None) -> None:
    """Hold the running rollout of NAME at its stage: no look moves it on or back."""
    with gateway_client(url) as client:
        click.echo(client.rollout_pause(name))


@rollout_group.command()
@click.argument("name")
@gateway_options
def resume(name: str, url: str | None) -> None:
    """Go on with the paused rollout of NAME; its stage's hold starts again."""
    with gateway_client(url) as client:
        click.echo(client.rollout_resume(name))


@rollout_group.command()
@click.argument("name")
@gateway_options
def abort(name: str, url: str | None) -> None:
    """Stop the rollout of NAME and send all of its traffic back to the stable revision."""
    with gateway_client(url) as client:
        click.echo(client.rollout_abort(name))
