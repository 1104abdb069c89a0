"""Pipelines run for real: steps in worker processes (and Ray tasks on the shared test cluster),
their order and parallelism, caching, retries, timeouts, conditions, a failing branch, and the
metadata store's record of it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from serving.pipelines.backends import LocalBackend, RayBackend
from serving.pipelines.compiler import compile_pipeline
from serving.pipelines.executor import RunOutcome, StepEvent, execute
from serving.pipelines.metadata import MetadataStore
from tests import pipeline_components as pc
from tests.ray_cluster import RayTestCluster

pytestmark = pytest.mark.integration


def _run(
    pipe: Any,
    store: MetadataStore,
    state: Path,
    params: dict[str, Any] | None = None,
    backend: Any = None,
    **kw: Any,
) -> tuple[RunOutcome, list[StepEvent]]:
    events: list[StepEvent] = []
    outcome = asyncio.run(
        execute(
            compile_pipeline(pipe, params),
            store,
            backend or LocalBackend(),
            state,
            on_event=events.append,
            **kw,
        )
    )
    return outcome, events


def _statuses(outcome: RunOutcome) -> dict[str, str]:
    return {step: r.status for step, r in outcome.steps.items()}


def test_a_fan_out_runs_its_steps_and_records_everything(store: MetadataStore, state: Path) -> None:
    outcome, events = _run(pc.fan_out, store, state)

    assert outcome.status == "SUCCEEDED"
    assert _statuses(outcome) == dict.fromkeys(
        ["make_numbers", "scale", "scale-2", "scale-3", "summarize", "fit"], "SUCCEEDED"
    )
    assert outcome.steps["summarize"].params == {"total": 60.0, "count": 3}  # (0+1+2+3+4) * (1+2+3)
    model = Path(outcome.steps["fit"].artifacts["model"]["path"])
    assert json.loads((model / "weights.json").read_text()) == {"mean": 2.0}
    assert next(e.step for e in events if e.status == "RUNNING") == "make_numbers"

    view = store.run(outcome.run_id)
    assert view.run.status == "SUCCEEDED" and len(view.steps) == 6
    assert {(m.name, m.value) for m in view.metrics if m.step_id == "summarize"} >= {
        ("total", 60.0),
        ("parts", 3.0),
    }
    assert {a.name for a in view.artifacts} == {"numbers", "scaled", "report", "model"}
    assert Path(outcome.steps["scale"].log_path).exists()


def test_independent_steps_run_at_the_same_time(store: MetadataStore, state: Path) -> None:
    outcome, _ = _run(pc.two_sleeps, store, state, {"seconds": 2.0}, backend=LocalBackend(max_parallel=2))
    a, b = (outcome.steps[s] for s in ("sleep_for", "sleep_for-2"))
    # Each slept 2 s; they overlapped if each began before the other ended.
    assert a.params["output"] < b.finished and b.params["output"] < a.finished


def test_an_unchanged_step_is_cached_and_a_change_runs_again(store: MetadataStore, state: Path) -> None:
    first, _ = _run(pc.fan_out, store, state)
    second, _ = _run(pc.fan_out, store, state)
    assert set(_statuses(second).values()) == {"CACHED"}
    assert second.steps["fit"].artifacts["model"]["sha256"] == first.steps["fit"].artifacts["model"]["sha256"]

    third, _ = _run(pc.fan_out, store, state, {"factors": [1.0, 2.0, 4.0]})
    assert _statuses(third) == {
        "make_numbers": "CACHED",
        "scale": "CACHED",
        "scale-2": "CACHED",
        "scale-3": "SUCCEEDED",
        "summarize": "SUCCEEDED",
        "fit": "CACHED",  # same code and same input dataset as before
    }
    fourth, _ = _run(pc.fan_out, store, state, use_cache=False)
    assert set(_statuses(fourth).values()) == {"SUCCEEDED"}
    # A run that reused nothing is still there to be reused: the newest intact execution wins.
    fifth, _ = _run(pc.fan_out, store, state)
    assert {s.cached_from for s in store.run(fifth.run_id).steps} == {
        (fourth.run_id, s) for s in _statuses(fourth)
    }
    cached_step = next(s for s in store.run(second.run_id).steps if s.step_id == "fit")
    assert cached_step.cached_from == (first.run_id, "fit")


def test_a_deleted_artifact_is_a_cache_miss(store: MetadataStore, state: Path) -> None:
    first, _ = _run(pc.fan_out, store, state)
    Path(first.steps["make_numbers"].artifacts["numbers"]["path"]).unlink()
    second, _ = _run(pc.fan_out, store, state)
    assert _statuses(second)["make_numbers"] == "SUCCEEDED"


def test_a_failing_step_stops_its_dependents_and_other_branches_finish(
    store: MetadataStore, state: Path
) -> None:
    outcome, _ = _run(pc.branches, store, state)
    assert outcome.status == "FAILED"
    assert _statuses(outcome) == {"fail": "FAILED", "echo": "SKIPPED", "echo-2": "SUCCEEDED"}
    failed = outcome.steps["fail"]
    assert failed.error == "RuntimeError: boom"
    log = Path(failed.log_path).read_text()
    assert "about to fail" in log and "Traceback" in log
    assert outcome.steps["echo"].error == "upstream step fail failed"
    assert store.run(outcome.run_id).run.status == "FAILED"


def test_a_failed_attempt_is_retried(store: MetadataStore, state: Path, tmp_path: Path) -> None:
    outcome, events = _run(pc.retried, store, state, {"marker": str(tmp_path / "marker")})
    assert outcome.status == "SUCCEEDED"
    assert outcome.steps["flaky"].attempts == 2
    assert outcome.steps["flaky"].params == {"output": "recovered"}
    assert any("retrying: RuntimeError: first attempt fails" in e.detail for e in events)


def test_a_step_past_its_timeout_is_stopped(store: MetadataStore, state: Path) -> None:
    outcome, _ = _run(pc.too_slow, store, state)
    result = outcome.steps["sleep_for"]
    assert result.status == "FAILED" and result.error == "timed out after 1s"
    assert result.finished - result.started < 10


def test_a_condition_that_does_not_hold_skips_its_steps(store: MetadataStore, state: Path) -> None:
    outcome, _ = _run(pc.skipped, store, state)
    assert outcome.status == "SUCCEEDED"
    assert outcome.steps["echo"].status == "SKIPPED"
    assert "condition not met: make_numbers.output = 2, not > 100" in outcome.steps["echo"].error


def test_the_ray_executor_gives_the_same_artifacts(
    ray_driver: RayTestCluster, store: MetadataStore, state: Path, tmp_path: Path
) -> None:
    local, _ = _run(pc.fan_out, store, state, use_cache=False)
    ray_run, _ = _run(
        pc.fan_out, store, tmp_path / "ray-state", backend=RayBackend(ray_driver.address), use_cache=False
    )
    assert ray_run.status == "SUCCEEDED"

    def digests(outcome: RunOutcome) -> dict[tuple[str, str], str]:
        return {(s, n): a["sha256"] for s, r in outcome.steps.items() for n, a in r.artifacts.items()}

    assert digests(ray_run) == digests(local)
    assert {s: r.params for s, r in ray_run.steps.items()} == {s: r.params for s, r in local.steps.items()}
    assert store.run(ray_run.run_id).run.executor == "ray"
