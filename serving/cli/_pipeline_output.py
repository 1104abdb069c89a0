"""What `servegate pipeline` prints: live progress while a run goes, the outcome, runs and one run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from serving.cli._output import format_age, table_text
from serving.pipelines.executor import RunOutcome, StepEvent
from serving.pipelines.types import PipelineSpec, StepStatus

__all__ = ["Progress", "describe_run", "outcome_lines", "print_runs"]

_STYLE = {
    StepStatus.RUNNING: "yellow",
    StepStatus.SUCCEEDED: "green",
    StepStatus.CACHED: "cyan",
    StepStatus.FAILED: "red",
    StepStatus.SKIPPED: "dim",
}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


class Progress:
    """Steps and their state, redrawn in place on a terminal; one line per change elsewhere."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.console = Console(stderr=True)
        self.state = {s.id: (StepStatus.PENDING, 0, "") for s in spec.steps}
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self._live: Live | None = None

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        if not self.console.is_terminal:
            yield
            return
        with Live(self._table(), console=self.console, refresh_per_second=4, transient=False) as live:
            self._live = live
            try:
                yield
            finally:
                live.update(self._table())
                self._live = None

    def update(self, event: StepEvent) -> None:
        self.state[event.step] = (event.status, event.attempt, event.detail)
        if event.status == StepStatus.RUNNING:
            self.started.setdefault(event.step, event.time)
        else:
            self.finished[event.step] = event.time
        if self._live is not None:
            self._live.update(self._table())
        else:
            detail = f" ({event.detail})" if event.detail else ""
            attempt = f" attempt {event.attempt}" if event.attempt > 1 else ""
            self.console.print(f"{event.step}: {event.status}{attempt}{detail}", highlight=False)

    def _table(self) -> Table:
        table = Table(box=None, pad_edge=False)
        for column in ("STEP", "STATUS", "ATTEMPT", "TIME", "DETAIL"):
            table.add_column(column)
        now = time.time()
        for step, (status, attempt, detail) in self.state.items():
            start = self.started.get(step)
            end = self.finished.get(step, now if status == StepStatus.RUNNING else None)
            seconds = end - start if start is not None and end is not None else None
            table.add_row(
                step,
                f"[{_STYLE.get(status, '')}]{status}[/]" if status in _STYLE else status,
                str(attempt) if attempt else "",
                _duration(seconds),
                detail[:80],
            )
        return table


def outcome_lines(outcome: RunOutcome) -> list[str]:
    """The run's end: its id and status, and for each failed step why and where its log is."""
    counts: dict[str, int] = {}
    for result in outcome.steps.values():
        counts[result.status] = counts.get(result.status, 0) + 1
    summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    lines = [f"run {outcome.run_id} {outcome.status.lower()} ({summary})"]
    for result in outcome.failed:
        lines.append(f"  step {result.step} failed: {result.error}")
        if result.log_path:
            lines.append(f"    log: {result.log_path}")
    lines.append(f"details: servegate pipeline show {outcome.run_id}")
    return lines


def print_runs(runs: list[Any]) -> None:
    now = time.time()
    rows = [
        [
            r.id,
            r.pipeline,
            r.status,
            r.executor,
            format_age(r.started, now),
            _duration(r.duration),
            ", ".join(f"{n} {s.lower()}" for s, n in sorted(r.steps.items())),
        ]
        for r in runs
    ]
    print(table_text(["RUN", "PIPELINE", "STATUS", "EXECUTOR", "AGE", "DURATION", "STEPS"], rows))


def describe_run(view: Any) -> str:
    now = time.time()
    run = view.run
    lines = [
        f"Run:       {run.id}",
        f"Pipeline:  {run.pipeline}",
        f"Status:    {run.status}",
        f"Executor:  {run.executor}",
        f"Started:   {format_age(run.started, now)} ago",
        f"Duration:  {_duration((run.finished or now) - run.started)}",
        f"Params:    {', '.join(f'{k}={v!r}' for k, v in view.params.items()) or '<none>'}",
        "",
        "Steps:",
    ]
    rows = []
    for s in view.steps:
        note = s.error or (f"from {s.cached_from[0]}/{s.cached_from[1]}" if s.cached_from else "")
        rows.append([s.step_id, s.status, str(s.attempts), _duration(s.duration), note[:100]])
    lines.append(table_text(["STEP", "STATUS", "ATTEMPTS", "DURATION", "NOTE"], rows, indent=2))
    if view.artifacts:
        lines += ["", "Artifacts:"]
        rows = [[a.step_id, a.name, a.type, a.sha256[:12], str(a.size), a.path] for a in view.artifacts]
        lines.append(table_text(["STEP", "NAME", "TYPE", "SHA256", "SIZE", "PATH"], rows, indent=2))
    if view.metrics:
        lines += ["", "Metrics:"]
        rows = [[m.step_id, m.name, f"{m.value:g}"] for m in view.metrics]
        lines.append(table_text(["STEP", "METRIC", "VALUE"], rows, indent=2))
    if view.registrations:
        lines += ["", "Registered:"]
        lines += [f"  {r.step_id}: {r.registry_uri}" for r in view.registrations]
    lines += ["", f"Logs: servegate pipeline show {run.id} --logs STEP"]
    return "\n".join(lines)
