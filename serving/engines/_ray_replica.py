"""The Ray actor behind one replica: it runs `servegate model serve` on its node and reports on it.

The actor is only a handle on the process: the gateway sends requests straight to the process, on
the node's address, and Ray is never on the request path. The process listens on free ports of
the node's address, sees the GPUs Ray gave the actor, and dies with the actor (PR_SET_PDEATHSIG),
so a killed actor or a lost node leaves no replica behind. Its scratch folder (port file, log, the
model repository of a multi-model pool) is on the node and goes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from serving.engines import _replica_proc as proc
from serving.engines._ray_placement import DEFAULT_CPUS
from serving.engines.base import ReplicaSpec

__all__ = ["ReplicaActor"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ReplicaActor:
    """One replica's process on this node. Its methods are async, so `wait` can block while the
    engine asks `info` or `stop`."""

    def __init__(
        self, replica_id: str, spec: ReplicaSpec, drain_timeout_s: float, secrets: dict[str, str]
    ) -> None:
        import ray

        self.replica_id, self.revision = replica_id, spec.revision
        self.node_id = ray.get_runtime_context().get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        self.gpu_ids = tuple(int(i) for i in ray.get_gpu_ids())
        self.dir = Path(tempfile.mkdtemp(prefix=f"servegate-{replica_id}-"))
        self.log = self.dir / "replica.log"
        self.port_file = self.dir / "ports.json"
        self.error = ""
        self.process: subprocess.Popen[bytes] | None = None
        repository = None if spec.models else self.dir / "models"
        if repository is not None:
            repository.mkdir()
        # The runtime's threads are sized from the CPUs Ray holds for the actor.
        command = proc.serve_command(
            sys.executable,
            spec,
            self.port_file,
            drain_timeout_s,
            repository,
            host=self.node_ip,
            cpus=spec.cpus or DEFAULT_CPUS,
        )
        env = proc.replica_env(os.environ, spec, self.gpu_ids) | secrets
        try:
            with self.log.open("ab") as log:
                # In __init__, on the actor's main thread: PDEATHSIG follows the thread that forked.
                self.process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
        except OSError as exc:
            self.error = f"cannot start on node {self.node_ip}: {exc}"

    async def info(self) -> dict[str, Any]:
        """Where it runs and listens: node, pid, ports (None until both listen), exit code (None while
        it runs), and the last lines it logged once it has exited."""
        ports = proc.read_port_file(self.port_file)
        code = self.process.poll() if self.process is not None else -1
        return {
            "replica": self.replica_id,
            "revision": self.revision,
            "node_id": self.node_id,
            "node_ip": self.node_ip,
            "gpu_ids": list(self.gpu_ids),
            "pid": self.process.pid if self.process is not None else None,
            "http": ports.http if ports else None,
            "grpc": ports.grpc if ports else None,
            "exit": code,
            "error": self.error,
            "log": proc.log_tail(self.log) if code is not None else "",
        }

    async def log_lines(self, lines: int) -> list[str]:
        """The last `lines` lines the replica process logged."""
        return proc.tail_lines(self.log, lines)

    async def wait(self) -> dict[str, Any]:
        """Return `info()` once the process has exited."""
        while self.process is not None and self.process.poll() is None:
            await asyncio.sleep(0.1)
        return await self.info()

    async def stop(self, grace_s: float) -> int | None:
        """SIGTERM, `grace_s` seconds to drain, then SIGKILL for anything left in its group; the
        scratch folder goes too. Returns the exit code."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait)
        shutil.rmtree(self.dir, ignore_errors=True)
        return process.returncode if process is not None else None
