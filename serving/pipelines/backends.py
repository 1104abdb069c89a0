"""Where a step's code runs: a local worker process per step, or a Ray task on a Ray cluster.

Both run `worker.run_step` on the same `Invocation` and give back the same result dict
(`{"ok": True, "params", "artifacts", "registrations"}` or `{"ok": False, "error", "details"}`),
with the output artifacts at the Invocation's paths, which is why the two executors produce
identical artifacts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from serving.pipelines._ray_artifacts import UnsafeArchive, pack, receive, run_on_node
from serving.pipelines._ray_placement import node_died, task_options, unplaceable
from serving.pipelines.worker import Invocation
from serving.raycluster import RayUnavailable, check_address, connect

__all__ = ["BACKENDS", "Backend", "BackendError", "LocalBackend", "RayBackend", "backend_for"]


class BackendError(Exception):
    """The executor cannot start (Ray missing, a cluster unreachable); nothing ran."""


class Backend(ABC):
    name: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Get ready to run steps (connect to a cluster, ...)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what `start` took."""

    @abstractmethod
    async def run(self, invocation: Invocation, timeout_s: float | None) -> dict[str, Any]:
        """Run one step to its end; a step that fails, crashes or times out is an `ok: False` result."""


def _timed_out(timeout_s: float | None) -> dict[str, Any]:
    return {"ok": False, "error": f"timed out after {timeout_s:g}s", "details": ""}


class LocalBackend(Backend):
    """One `python -m serving.pipelines.worker` process per step, in its own process group (so a
    timeout also stops what the step started, such as data-parallel training workers).

    Every step runs on this machine: what a step asks of its node (`Invocation.resources`: CPUs,
    memory, GPUs, node labels) is ignored, as Kubeflow's local runner ignores it."""

    name = "local"

    def __init__(self, max_parallel: int | None = None) -> None:
        #: steps running at once (default: one per CPU core); the others wait their turn.
        self._slots = asyncio.Semaphore(max_parallel or os.cpu_count() or 1)

    async def run(self, invocation: Invocation, timeout_s: float | None) -> dict[str, Any]:
        async with self._slots:
            return await self._run(invocation, timeout_s)

    async def _run(self, invocation: Invocation, timeout_s: float | None) -> dict[str, Any]:
        base = Path(invocation.log_path).with_suffix(f".attempt-{invocation.attempt}")
        inv_path, result_path = (
            base.with_suffix(base.suffix + ".json"),
            base.with_suffix(base.suffix + ".result.json"),
        )
        inv_path.parent.mkdir(parents=True, exist_ok=True)
        inv_path.write_text(invocation.to_json())
        result_path.unlink(missing_ok=True)
        with open(invocation.log_path, "ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "serving.pipelines.worker", str(inv_path), str(result_path),
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        try:
            code = await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            await _stop_group(process)
            return _timed_out(timeout_s)
        except asyncio.CancelledError:
            await _stop_group(process)
            raise
        try:
            return json.loads(result_path.read_text())
        except (OSError, ValueError):
            return {
                "ok": False,
                "error": f"the step's process exited with code {code} before reporting",
                "details": "",
            }


async def _stop_group(process: asyncio.subprocess.Process) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), wait)
            return
        except TimeoutError:
            continue


class RayBackend(Backend):
    """Each step is a Ray task (one CPU unless the step asks otherwise; no automatic retry: the
    executor retries). `address`: a running cluster (`ray://...` or `HOST:PORT`); None starts a
    local one for this run.

    The nodes need no shared filesystem: a step's input artifacts and its pipeline file travel to
    its node through Ray's object store (each artifact put there once per run, however many steps
    read it), the step works in a scratch folder of that node, and its outputs and log come back
    the same way, to the paths under the driver's state dir the executor gave (`_ray_artifacts`).
    An artifact travels whole, in memory: its size is bounded by the object store's memory (past
    that Ray spills objects to disk). The pipeline file travels alone: what it imports must be
    installed on the nodes.

    A step's resources become its task's options: cpus -> `num_cpus`, accelerators -> `num_gpus`,
    memory_bytes -> `memory`, node_selector -> `label_selector`. A step that no node of the cluster
    can hold as it stands when the step starts (a label no node has, more GPUs than any node has)
    fails at once, instead of waiting for a node that may never join."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self._started_local = False
        self._remote: Any = None
        #: what this run put in the object store, by ("artifact" | "module", driver-side path).
        self._shipped: dict[tuple[str, str], asyncio.Future[Any]] = {}

    async def start(self) -> None:
        # On this thread: Ray installs its signal handlers (Ctrl-C) only from the main thread.
        try:
            self._started_local = connect(self.address)
        except RayUnavailable as exc:
            raise BackendError(f"the ray executor: {exc}") from None
        import ray

        self._remote = ray.remote(num_cpus=1, max_retries=0)(run_on_node)

    async def close(self) -> None:
        import ray

        self._shipped.clear()  # the object store frees what no task holds any more
        if self._started_local and ray.is_initialized():
            ray.shutdown()

    async def run(self, invocation: Invocation, timeout_s: float | None) -> dict[str, Any]:
        import ray

        problem = None
        if invocation.resources:
            problem = await asyncio.to_thread(unplaceable, invocation.resources)
        if problem is None:
            try:
                args = await self._arguments(invocation)
            except (OSError, UnsafeArchive, ray.exceptions.RayError) as exc:
                problem = f"cannot send the step's code and inputs to Ray: {exc}"
        if problem is not None:
            _note(invocation, problem)
            return {"ok": False, "error": problem, "details": ""}
        ref = self._remote.options(**task_options(invocation.resources)).remote(*args)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout_s)
        except TimeoutError:
            ray.cancel(ref, force=True)
            _note(invocation, f"timed out after {timeout_s:g}s; what it printed on its node is lost")
            return _timed_out(timeout_s)
        except asyncio.CancelledError:
            ray.cancel(ref, force=True)
            raise
        except ray.exceptions.NodeDiedError as exc:
            error = await asyncio.to_thread(node_died, exc)
            _note(invocation, error)
            return {"ok": False, "error": error, "details": str(exc)}
        except ray.exceptions.RayError as exc:  # the worker died
            return {"ok": False, "error": f"the Ray task failed: {exc}", "details": ""}
        return await asyncio.to_thread(receive, invocation, result)

    async def _arguments(self, inv: Invocation) -> tuple[Any, ...]:
        """The task's arguments: the invocation with each input naming its packed artifact by index
        in the rest, the pipeline file's (name, source), then the packed artifacts (object refs)."""
        refs: list[Any] = []

        async def ship(spec: dict[str, Any]) -> dict[str, Any]:
            path = Path(spec["path"])
            refs.append(await self._put(("artifact", str(path)), lambda: pack(path)))
            return {**spec, "packed": len(refs) - 1}

        inputs = {
            name: [await ship(s) for s in spec] if isinstance(spec, list) else await ship(spec)
            for name, spec in inv.inputs.items()
        }
        source = Path(inv.module_file)
        module = await self._put(("module", str(source)), lambda: (source.name, source.read_bytes()))
        return (replace(inv, inputs=inputs).to_json(), module, *refs)

    async def _put(self, key: tuple[str, str], make: Callable[[], Any]) -> Any:
        """`make()` put in the object store once per run, by `key`: steps that start together and
        read the same artifact share one copy (and one packing)."""
        import ray

        shipped = self._shipped.get(key)
        if shipped is None:
            shipped = asyncio.ensure_future(asyncio.to_thread(lambda: ray.put(make())))
            shipped.add_done_callback(lambda f: f.cancelled() or f.exception())  # seen, if unawaited
            self._shipped[key] = shipped
        # Shielded: a step cancelled (timed out) while waiting must not cancel it for the others.
        return await asyncio.shield(shipped)


def _note(inv: Invocation, line: str) -> None:
    """A line of the executor's own in the step's log (what the step printed stayed on its node)."""
    Path(inv.log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(inv.log_path, "a") as log:
        log.write(f"--- {line}\n")


def _check_reachable(address: str) -> None:
    """Fail fast on a cluster that does not answer: `ray.init` would retry it for ever."""
    try:
        check_address(address)
    except RayUnavailable as exc:
        raise BackendError(str(exc)) from None


BACKENDS = ("local", "ray")


def backend_for(name: str, ray_address: str | None = None, max_parallel: int | None = None) -> Backend:
    if name == "local":
        return LocalBackend(max_parallel)
    if name == "ray":
        return RayBackend(ray_address)
    raise ValueError(f"unknown executor '{name}': use {' or '.join(BACKENDS)}")
