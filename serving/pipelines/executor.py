"""Run a compiled pipeline: each step once what it waits for has finished, independent steps at the
same time, on a backend (local processes or Ray); retries, timeouts, conditions and caching per
step; everything recorded in the metadata store.

A failing step fails only what depends on it (SKIPPED, with the reason); other branches finish.
A step whose code, parameters and input artifacts are unchanged reuses an earlier execution's
outputs (CACHED) unless caching is off for it or for the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from serving.pipelines.backends import Backend
from serving.pipelines.metadata import MetadataStore, cache_key
from serving.pipelines.types import (
    ArtifactRef,
    Const,
    OutputRef,
    PipelineSpec,
    StepResult,
    StepSpec,
    StepStatus,
)
from serving.pipelines.worker import Invocation
from serving.registry.artifacts import artifact_digest

__all__ = ["RunOutcome", "StepEvent", "execute"]


@dataclass(frozen=True, slots=True)
class StepEvent:
    """A step changed state (for progress displays)."""

    step: str
    status: str
    attempt: int = 1
    detail: str = ""
    time: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    run_id: str
    status: str  # SUCCEEDED | FAILED
    steps: dict[str, StepResult]

    @property
    def failed(self) -> list[StepResult]:
        return [r for r in self.steps.values() if r.status == StepStatus.FAILED]


@dataclass
class _Produced:
    """An output artifact as later steps receive it, and as the metadata store knows it."""

    type: str
    path: str
    metadata: dict[str, Any]
    sha256: str
    artifact_id: int


class _Run:
    def __init__(
        self,
        spec: PipelineSpec,
        store: MetadataStore,
        backend: Backend,
        state_dir: Path,
        use_cache: bool,
        on_event: Callable[[StepEvent], None],
        env: dict[str, str],
    ) -> None:
        self.spec, self.store, self.backend = spec, store, backend
        self.use_cache, self.on_event, self.env = use_cache, on_event, env
        self.run_id = store.start_run(spec, backend.name)
        self.artifacts_dir = state_dir / "pipelines" / "artifacts" / self.run_id
        self.logs_dir = state_dir / "pipelines" / "logs" / self.run_id
        self.results: dict[str, StepResult] = {}
        self.produced: dict[tuple[str, str], _Produced] = {}

    async def run(self) -> RunOutcome:
        waiting = {s.id: s for s in self.spec.steps}
        running: dict[asyncio.Task[None], str] = {}
        try:
            while waiting or running:
                for step in [s for s in waiting.values() if s.upstream() <= set(self.results)]:
                    del waiting[step.id]
                    skip = self._skip_reason(step)
                    if skip is not None:
                        self._finish(
                            step, StepResult(step.id, StepStatus.SKIPPED, error=skip, attempts=0), {}
                        )
                        continue
                    running[asyncio.create_task(self._step(step), name=step.id)] = step.id
                if not running:
                    continue
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step_id = running.pop(task)
                    if task.exception() is not None:  # a bug here, not in the step: fail the step
                        error = f"{type(task.exception()).__name__}: {task.exception()}"
                        self._finish(
                            self.spec.step(step_id), StepResult(step_id, StepStatus.FAILED, error=error), {}
                        )
        except BaseException:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            self.store.finish_run(self.run_id, StepStatus.FAILED)
            raise
        status = (
            StepStatus.FAILED
            if any(r.status == StepStatus.FAILED for r in self.results.values())
            else "SUCCEEDED"
        )
        self.store.finish_run(self.run_id, status)
        return RunOutcome(self.run_id, status, dict(self.results))

    # -- one step ---------------------------------------------------------------------------------

    def _skip_reason(self, step: StepSpec) -> str | None:
        for upstream in sorted(step.upstream()):
            result = self.results[upstream]
            if result.status not in StepStatus.DONE:
                return f"upstream step {upstream} {result.status.lower()}"
        for condition in step.conditions:
            value = self.results[condition.left.step].params.get(condition.left.name)
            if not condition.holds(value):
                left = f"{condition.left.step}.{condition.left.name}"
                return f"condition not met: {left} = {value!r}, not {condition.op} {condition.right!r}"
        return None

    async def _step(self, step: StepSpec) -> None:
        params = {name: self._value(ref, step) for name, ref in step.params.items()}
        inputs = {name: self._inputs(ref) for name, ref in step.artifacts.items()}
        consumed = {
            name: [p.artifact_id for p in (value if isinstance(value, list) else [value])]
            for name, value in inputs.items()
        }
        key = None
        if step.cache:
            # Recorded even when this run reuses nothing (--no-cache), so later runs may reuse it.
            shas = {
                name: [p.sha256 for p in (v if isinstance(v, list) else [v])] for name, v in inputs.items()
            }
            key = cache_key(step.code_hash, step.component, params, shas)
            if self.use_cache and await self._reuse(step, key, consumed):
                return
        invocation = Invocation(
            run_id=self.run_id,
            step_id=step.id,
            module_file=step.module_file,
            function=step.function,
            params=params,
            inputs={name: _as_input(value) for name, value in inputs.items()},
            outputs={
                n: {"type": t, "path": str(self.artifacts_dir / step.id / n)} for n, t in step.outputs.items()
            },
            log_path=str(self.logs_dir / f"{step.id}.log"),
            env=self.env,
            resources=step.resources.as_dict(),
        )
        started = time.time()
        for attempt in range(1, step.retries + 2):
            invocation = replace(invocation, attempt=attempt)
            self.store.step_started(self.run_id, step, attempt, key, params=params)
            self.on_event(StepEvent(step.id, StepStatus.RUNNING, attempt))
            outcome = await self.backend.run(invocation, step.timeout_s)
            if outcome["ok"]:
                break
            if attempt <= step.retries:
                self.on_event(
                    StepEvent(step.id, StepStatus.RUNNING, attempt, f"retrying: {outcome['error']}")
                )
        result = StepResult(
            step.id,
            StepStatus.SUCCEEDED if outcome["ok"] else StepStatus.FAILED,
            params=outcome.get("params", {}),
            error=None if outcome["ok"] else outcome["error"],
            attempts=attempt,
            started=started,
            finished=time.time(),
            log_path=invocation.log_path,
        )
        if outcome["ok"]:
            result = self._record_outputs(step, result, outcome)
        self._finish(step, result, consumed, key)
        if result.status == StepStatus.SUCCEEDED:
            self._record_registrations(step, outcome.get("registrations", []), inputs)

    def _record_outputs(self, step: StepSpec, result: StepResult, outcome: dict[str, Any]) -> StepResult:
        artifacts = {}
        for name, type_name in step.outputs.items():
            written = outcome["artifacts"][name]
            path = Path(written["path"])
            if not path.exists():
                return replace(
                    result, status=StepStatus.FAILED, error=f"output artifact '{name}' was not written"
                )
            sha256, size = artifact_digest(path)
            artifact_id = self.store.record_artifact(
                self.run_id, step.id, name, type_name, str(path), sha256, size, written["metadata"]
            )
            self.produced[(step.id, name)] = _Produced(
                type_name, str(path), written["metadata"], sha256, artifact_id
            )
            artifacts[name] = {
                "path": str(path),
                "metadata": written["metadata"],
                "sha256": sha256,
                "id": artifact_id,
            }
        return replace(result, artifacts=artifacts)

    async def _reuse(self, step: StepSpec, key: str, consumed: dict[str, list[int]]) -> bool:
        hit = self.store.cached(key)
        if hit is None:
            return False
        source, earlier = hit
        for name, type_name in step.outputs.items():
            a = earlier.artifacts[name]
            self.produced[(step.id, name)] = _Produced(
                type_name, a["path"], a["metadata"], a["sha256"], a["id"]
            )
        now = time.time()
        result = replace(
            earlier, step=step.id, status=StepStatus.CACHED, started=now, finished=now, attempts=0
        )
        self._finish(step, result, consumed, key, cached_from=source)
        return True

    def _finish(
        self,
        step: StepSpec,
        result: StepResult,
        consumed: dict[str, list[int]],
        key: str | None = None,
        cached_from: tuple[str, str] | None = None,
    ) -> None:
        self.results[step.id] = result
        self.store.step_finished(self.run_id, result, consumed, key, cached_from)
        self.on_event(StepEvent(step.id, result.status, result.attempts, result.error or ""))

    def _record_registrations(
        self, step: StepSpec, registrations: list[dict[str, Any]], inputs: dict[str, Any]
    ) -> None:
        for entry in registrations:
            name = entry.get("artifact")
            produced = self.produced.get((step.id, name)) if name else None
            if produced is None and name in inputs and not isinstance(inputs[name], list):
                produced = inputs[name]
            self.store.record_registration(
                self.run_id, step.id, produced.artifact_id if produced else None, entry["uri"]
            )

    # -- values -----------------------------------------------------------------------------------

    def _value(self, ref: Any, step: StepSpec) -> Any:
        if isinstance(ref, list):
            return [self._value(r, step) for r in ref]
        if isinstance(ref, Const):
            return ref.value
        assert isinstance(ref, OutputRef)
        outputs = self.results[ref.step].params
        if ref.name not in outputs:
            raise KeyError(
                f"step {ref.step} returned no '{ref.name}' (it returned {', '.join(outputs) or 'nothing'})"
            )
        return outputs[ref.name]

    def _inputs(self, ref: Any) -> Any:
        if isinstance(ref, list):
            return [self._inputs(r) for r in ref]
        assert isinstance(ref, ArtifactRef)
        return self.produced[(ref.step, ref.name)]


def _as_input(value: Any) -> Any:
    if isinstance(value, list):
        return [_as_input(v) for v in value]
    return {"type": value.type, "path": value.path, "metadata": value.metadata}


async def execute(
    spec: PipelineSpec,
    store: MetadataStore,
    backend: Backend,
    state_dir: Path,
    *,
    use_cache: bool = True,
    on_event: Callable[[StepEvent], None] | None = None,
    env: dict[str, str] | None = None,
) -> RunOutcome:
    """Run `spec` to its end on `backend` (started and closed here); returns every step's result."""
    await backend.start()
    try:
        run = _Run(
            spec, store, backend, state_dir.resolve(), use_cache, on_event or (lambda e: None), env or {}
        )
        return await run.run()
    finally:
        await backend.close()
