"""Where a step's code runs: a local worker process per step, or a Ray task on a Ray cluster.

Both run `worker.run_step` on the same `Invocation` and give back the same result dict
(`{"ok": True, "params", "artifacts", "registrations"}` or `{"ok": False, "error", "details"}`),
which is why the two executors produce identical artifacts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from serving.pipelines.worker import Invocation, StepError, run_step

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
    timeout also stops what the step started, such as data-parallel training workers)."""

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


def _ray_step(invocation_json: str) -> dict[str, Any]:
    """The Ray task: the same step runner as a local worker."""
    inv = Invocation.from_json(invocation_json)
    try:
        return {"ok": True, **run_step(inv)}
    except StepError as exc:
        return {"ok": False, "error": str(exc), "details": exc.details}
    except BaseException as exc:
        import traceback

        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "details": traceback.format_exc()}


class RayBackend(Backend):
    """Each step is a Ray task (one CPU, no automatic retry: the executor retries). `address`: a
    running cluster (`ray://...` or `HOST:PORT`); None starts a local one for this run.

    Steps read and write artifacts by path, so every Ray node must see the state dir (one machine,
    or a shared filesystem mounted at the same path)."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self._started_local = False
        self._remote: Any = None

    async def start(self) -> None:
        try:
            import ray
        except ImportError:
            raise BackendError("the ray executor needs Ray: pip install 'servegate[ray]'") from None
        if self.address:
            _check_reachable(self.address)
        if not ray.is_initialized():
            root = str(Path(__file__).resolve().parents[2])
            pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
            # On this thread: Ray installs its signal handlers only from the main thread.
            try:
                ray.init(
                    address=self.address,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                    runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray cluster"
                raise BackendError(f"cannot start {where}: {exc}") from None
            self._started_local = self.address is None
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_ray_step)

    async def close(self) -> None:
        import ray

        if self._started_local and ray.is_initialized():
            ray.shutdown()

    async def run(self, invocation: Invocation, timeout_s: float | None) -> dict[str, Any]:
        import ray

        ref = self._remote.remote(invocation.to_json())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout_s)
        except TimeoutError:
            ray.cancel(ref, force=True)
            return _timed_out(timeout_s)
        except asyncio.CancelledError:
            ray.cancel(ref, force=True)
            raise
        except ray.exceptions.RayError as exc:  # the worker died
            return {"ok": False, "error": f"the Ray task failed: {exc}", "details": ""}


def _check_reachable(address: str) -> None:
    """Fail fast on a cluster that does not answer: `ray.init` would retry it for ever."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise BackendError(f"bad Ray address '{address}': use HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise BackendError(f"cannot reach the Ray cluster at {address}: {exc}") from None


BACKENDS = ("local", "ray")


def backend_for(name: str, ray_address: str | None = None, max_parallel: int | None = None) -> Backend:
    if name == "local":
        return LocalBackend(max_parallel)
    if name == "ray":
        return RayBackend(ray_address)
    raise ValueError(f"unknown executor '{name}': use {' or '.join(BACKENDS)}")
