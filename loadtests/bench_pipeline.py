#!/usr/bin/env python3
"""Benchmark pipelines: what a step costs on each executor, what caching saves, and data-parallel
training on digits with 1 and 2 workers.

    python loadtests/bench_pipeline.py [--rounds 3] [--json FILE]

Step overhead: the 6-step fan-out pipeline of the tests (trivial steps, so the time is the
executor's: a process per step locally, a task per step on Ray), `--rounds` runs each without the
cache, then once more with every step cached. Training: `train_classifier` on digits (a 64-64-10
MLP, 20 epochs, batch 64 per worker), 1 and 2 gloo workers: wall time, time per epoch, and the
validation accuracy reached. (`--seconds`, `--peers` and `--bench-dir` are not used here.)
"""

from __future__ import annotations

import asyncio
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.harness import benchmark_arguments
from serving.pipelines.backends import LocalBackend, RayBackend
from serving.pipelines.compiler import compile_pipeline
from serving.pipelines.executor import execute
from serving.pipelines.metadata import MetadataStore
from tests import pipeline_components


def main() -> int:
    args = benchmark_arguments(__doc__ or "").parse_args()
    console = Console(width=120)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="servegate-bench-") as tmp:
        console.print(f"[bold]executors[/]: the 6-step fan-out pipeline, {args.rounds} runs each")
        results["executors"] = {
            name: _executor_figures(Path(tmp) / name, factory, args.rounds)
            for name, factory in (("local", LocalBackend), ("ray", RayBackend))
        }
    console.print("[bold]training[/]: digits, 20 epochs, 1 and 2 workers")
    results["training"] = {workers: _training_figures(workers) for workers in (1, 2)}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    _report(console, results)
    return 0


def _executor_figures(state: Path, factory: Any, rounds: int) -> dict[str, float]:
    spec = compile_pipeline(pipeline_components.fan_out)
    times = []
    with MetadataStore(f"sqlite:///{state / 'pipelines.db'}") as store:
        for _ in range(rounds):
            started = time.perf_counter()
            outcome = asyncio.run(execute(spec, store, factory(), state, use_cache=False))
            assert outcome.status == "SUCCEEDED", outcome
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        cached = asyncio.run(execute(spec, store, factory(), state))
        cached_s = time.perf_counter() - started
    assert {r.status for r in cached.steps.values()} == {"CACHED"}
    median = statistics.median(times)
    # A run with every step cached costs what the executor costs before and after any step.
    per_step = max(median - cached_s, 0.0) / len(spec.steps)
    return {"run_s": median, "cached_run_s": cached_s, "per_step_s": per_step}


def _training_figures(workers: int) -> dict[str, float]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from serving.pipelines.preprocess import Standardizer
    from serving.pipelines.training import TrainConfig, mlp, train_classifier

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x.astype("float32"), y.astype("int64"), test_size=0.25, random_state=0, stratify=y
    )
    scaler = Standardizer.fit(x_train)
    config = TrainConfig(epochs=20, batch_size=64, lr=1e-2, workers=workers, seed=0)
    started = time.perf_counter()
    result = train_classifier(
        functools.partial(mlp, 64, (64,), 10),
        scaler.transform(x_train),
        y_train,
        config,
        val=(scaler.transform(x_val), y_val),
    )
    wall = time.perf_counter() - started
    per_epoch = statistics.median(m.seconds for m in result.history)
    return {"wall_s": wall, "epoch_s": per_epoch, "val_accuracy": result.final.val_accuracy or 0.0}


def _report(console: Console, results: dict[str, Any]) -> None:
    table = Table(title="executors (6 trivial steps)")
    for column in ("executor", "run (median)", "all cached (start-up)", "per step beyond that"):
        table.add_column(column, justify="right")
    for name, f in results["executors"].items():
        table.add_row(name, f"{f['run_s']:.2f} s", f"{f['cached_run_s']:.2f} s", f"{f['per_step_s']:.3f} s")
    console.print(table)
    table = Table(title="data-parallel training on digits (20 epochs)")
    for column in ("workers", "wall", "per epoch", "val accuracy"):
        table.add_column(column, justify="right")
    for workers, f in results["training"].items():
        table.add_row(
            str(workers), f"{f['wall_s']:.2f} s", f"{f['epoch_s'] * 1000:.0f} ms", f"{f['val_accuracy']:.3f}"
        )
    console.print(table)


if __name__ == "__main__":
    raise SystemExit(main())
