"""Components and pipelines the pipeline tests compile and run (components must live at module level:
a worker process or Ray task imports them from this file)."""

from __future__ import annotations

import json
import os
import sys
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


#: the label each worker node of the Ray test cluster carries (tests/ray_cluster.py NODE_LABEL).
NODE_LABEL = "servegate.io/node"


class Placed(NamedTuple):
    """Where a step ran: its Ray node ("" in a local worker), the paths it read and wrote, and the
    file its code was imported from."""

    node: str
    read: str
    wrote: str
    module: str


def _ray_node() -> str:
    ray = sys.modules.get("ray")  # imported in a Ray task already; never imported here for this
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else ""


@component
def write_table(rows: int, table: Output[Dataset]) -> Placed:
    """A folder artifact, with a subfolder."""
    (table.path / "part").mkdir(parents=True)
    (table.path / "rows.json").write_text(json.dumps([[i, i * i] for i in range(rows)]))
    (table.path / "part" / "schema.txt").write_text("n,square\n")
    table.metadata["rows"] = rows
    return Placed(_ray_node(), "", str(table.path), __file__)


@component
def total_squares(table: Input[Dataset], total: Output[Model]) -> Placed:
    """A file artifact made from a folder one."""
    rows = json.loads((table.path / "rows.json").read_text())
    schema = (table.path / "part" / "schema.txt").read_text()
    total.path.write_text(json.dumps({"total": sum(s for _, s in rows), "schema": schema}))
    return Placed(_ray_node(), str(table.path), str(total.path), __file__)


@component
def mark_and_sleep(marker: str, seconds: float) -> None:
    Path(marker).write_text("started")
    time.sleep(seconds)


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
def across_nodes(first: str = "a", second: str = "b", rows: int = 5):
    """Step 1 on the node labelled `first`, step 2 (one GPU, half a CPU, 64 MiB) on `second`."""
    table = write_table(rows=rows).add_node_selector_constraint(NODE_LABEL, first)
    (
        total_squares(table=table.outputs["table"])
        .add_node_selector_constraint(NODE_LABEL, second)
        .set_accelerator_limit(1)
        .set_cpu_limit("500m")
        .set_memory_limit("64Mi")
    )


@pipeline
def too_many_gpus():
    write_table(rows=1).set_accelerator_limit(4)


@pipeline
def pinned_sleep(marker: str, node: str = "b"):
    mark_and_sleep(marker=marker, seconds=60.0).add_node_selector_constraint(NODE_LABEL, node)


@pipeline
def skipped(count: int = 2):
    numbers = make_numbers(count=count)
    with Condition(numbers.output > 100):
        echo(text="never")


@component
def train_mlp(data: Input[Dataset], model: Output[Model]) -> float:
    """An ONNX MLP (the tests' sizes) standing for a trained model; its "accuracy"."""
    from predictors.examples import make_mlp_onnx

    rows = len(json.loads(data.path.read_text()))
    print(f"training on {rows} rows")
    make_mlp_onnx(model.path, (8, 16, 4))
    return 0.93


@component
def register_mlp(model: Input[Model], data: Input[Dataset], accuracy: float, name: str) -> str:
    """Into the registry of the state dir the pipeline runs with, this run and its data recorded."""
    from serving.pipelines.registration import register_model

    version = register_model(model, name, format="onnx", metrics={"accuracy": accuracy}, dataset=data)
    print(f"registered {version.uri}")
    return version.uri


@pipeline
def train_and_register(name: str = "mlp", rows: int = 12):
    numbers = make_numbers(count=rows)
    trained = train_mlp(data=numbers.outputs["numbers"])
    register_mlp(
        model=trained.outputs["model"], data=numbers.outputs["numbers"], accuracy=trained.output, name=name
    )
