"""Components and pipelines the pipeline tests compile and run (components must live at module level:
a worker process or Ray task imports them from this file)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import NamedTuple

from serving.pipelines import (
    Condition,
    Dataset,
    Input,
    Metrics,
    Model,
    Output,
    ParallelFor,
    component,
    pipeline,
)


@component
def make_numbers(count: int, numbers: Output[Dataset]) -> int:
    numbers.path.write_text(json.dumps(list(range(count))))
    numbers.metadata["rows"] = count
    return count


@component
def scale(numbers: Input[Dataset], factor: float, scaled: Output[Dataset]) -> float:
    values = [v * factor for v in json.loads(numbers.path.read_text())]
    scaled.path.write_text(json.dumps(values))
    return sum(values)


class Summary(NamedTuple):
    total: float
    count: int


@component
def summarize(totals: list, report: Output[Metrics]) -> Summary:
    report.log_metric("total", sum(totals))
    report.log_metric("parts", len(totals))
    return Summary(float(sum(totals)), len(totals))


@component
def fit(data: Input[Dataset], model: Output[Model]) -> float:
    values = json.loads(data.path.read_text())
    model.path.mkdir()
    (model.path / "weights.json").write_text(json.dumps({"mean": sum(values) / len(values)}))
    return sum(values) / len(values)


@component
def sleep_for(seconds: float) -> float:
    started = time.time()
    time.sleep(seconds)
    return started


@component
def fail(message: str) -> None:
    print("about to fail")
    raise RuntimeError(message)


@component
def flaky(marker: str) -> str:
    """Fails on its first attempt (no marker file yet), succeeds on the next."""
    path = Path(marker)
    if not path.exists():
        path.write_text("tried")
        raise RuntimeError("first attempt fails")
    return "recovered"


@component
def echo(text: str) -> str:
    print(text)
    return text


@component
def pid() -> int:
    return os.getpid()


@pipeline
def fan_out(count: int = 5, factors: list = [1.0, 2.0, 3.0]):  # noqa: B006 - a pipeline parameter default
    numbers = make_numbers(count=count)
    totals = [scale(numbers=numbers.outputs["numbers"], factor=f).output for f in ParallelFor(factors)]
    summary = summarize(totals=totals)
    with Condition(summary.outputs["total"] > 10):
        fit(data=numbers.outputs["numbers"])


@pipeline
def branches(message: str = "boom"):
    broken = fail(message=message)
    echo(text="after the failure").after(broken)
    echo(text="independent")


@pipeline
def two_sleeps(seconds: float = 1.0):
    sleep_for(seconds=seconds)
    sleep_for(seconds=seconds)


@pipeline
def retried(marker: str):
    flaky(marker=marker).set_retries(1)


@pipeline
def too_slow():
    sleep_for(seconds=30.0).set_timeout(1.0)


@pipeline
def skipped(count: int = 2):
    numbers = make_numbers(count=count)
    with Condition(numbers.output > 100):
        echo(text="never")
