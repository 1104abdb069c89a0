"""ProcessEngine: every replica is a local `servegate model serve` process on loopback.

The lifecycle (readiness checks, restarts with backoff, draining) is the shared one of
`_pools.PoolEngine`; this engine starts processes and hands out this machine's GPUs, whole ones.

Files under `state_dir`: `logs/<replica-id>.log` (its stdout and stderr, appended across restarts) and
`replicas/<replica-id>/ports.json` (the port file; `models/` beside it for a pool with no start-up models).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from predictors.threads import available_cores
from serving.engines import _replica_proc as proc
from serving.engines._pools import (
    BACKOFF_RESET_S,
    Endpoints,
    Pool,
    PoolEngine,
    Replica,
    ReplicaRun,
    backoff_delay,
    exit_text,
    pick_removals,
)
from serving.engines.base import ReplicaSpec
from serving.engines.gpus import allocate, detect_gpus

__all__ = ["BACKOFF_RESET_S", "ProcessEngine", "backoff_delay", "pick_removals", "unschedulable_reason"]

log = logging.getLogger(__name__)


def unschedulable_reason(gpus_per_replica: int, total: int, free: int, placed: int, desired: int) -> str:
    """Why a pool's replicas cannot all be placed, in words a user acts on."""
    reason = (
        f"not schedulable: each replica needs {_plural(gpus_per_replica, 'GPU')} (nvidia.com/gpu); "
        f"this machine has {_plural(total, 'GPU')}, {free} free"
    )
    return reason + (f"; {placed} of {desired} replicas placed" if placed else "")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


class _ProcessRun(ReplicaRun):
    """One replica process, its port file and its log."""

    def __init__(
        self, process: asyncio.subprocess.Process, port_file: Path, log: Path, log_start: int
    ) -> None:
        self.process, self.port_file, self.log, self.log_start = process, port_file, log, log_start
        self.node = socket.gethostname()

    async def endpoints(self) -> Endpoints | None:
        ports = proc.read_port_file(self.port_file)
        if ports is None:
            return None
        return Endpoints(f"http://127.0.0.1:{ports.http}", f"127.0.0.1:{ports.grpc}" if ports.grpc else None)

    async def wait(self) -> str:
        code = await self.process.wait()
        tail = proc.log_tail(self.log, start=self.log_start)
        return exit_text(code) + (f": {tail}" if tail else "")

    async def stop(self, grace_s: float) -> str | None:
        return exit_text(await proc.stop_process(self.process, grace_s))

    async def log_lines(self, lines: int) -> list[str]:
        return await asyncio.to_thread(proc.tail_lines, self.log, lines)


class ProcessEngine(PoolEngine):
    """Replicas as local processes.

    state_dir: where logs and port files go. python: the interpreter that runs `-m serving`.
    gpus: GPU ids replicas may be given (None: every GPU detected at start). `settings` are
    `PoolEngine`'s: health_interval_s, failure_threshold, start_timeout_s, backoff_initial_s,
    backoff_max_s, drain_timeout_s, credentials.
    """

    label = "process engine"

    def __init__(
        self,
        state_dir: Path,
        *,
        python: str = sys.executable,
        gpus: list[int] | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        self.state_dir = Path(state_dir)
        self.python = python
        self._gpus: tuple[int, ...] | None = None if gpus is None else tuple(gpus)
        self._free_gpus: set[int] = set()
        #: the cores replicas share (affinity and cgroup quota of this process), known once started.
        self._cores = 1

    @property
    def gpus(self) -> tuple[int, ...]:
        """The GPU ids the engine places replicas on (known once started)."""
        return self._gpus or ()

    async def start(self) -> None:
        if self._client is not None:
            return
        if self._gpus is None:
            self._gpus = tuple(gpu.index for gpu in await asyncio.to_thread(detect_gpus))
            log.info("GPUs for replicas: %s", ", ".join(map(str, self._gpus)) or "none")
        self._free_gpus = set(self._gpus)
        self._cores = available_cores()
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        await super().start()

    async def _place(self, pool: Pool) -> None:
        """Start replicas until the pool has `desired` (or the free GPUs run out)."""
        spec, missing = pool.spec, pool.desired - len(pool.active())
        new: list[Replica] = []
        for _ in range(missing):
            gpu_ids = allocate(self._free_gpus, spec.gpus) if spec.gpus else ()
            if gpu_ids is None:
                break
            self._free_gpus.difference_update(gpu_ids)
            new.append(self._new_replica(pool, gpu_ids))
        if len(new) < missing:
            placed = len(pool.active())
            gpus = unschedulable_reason(spec.gpus, len(self.gpus), len(self._free_gpus), placed, pool.desired)
            self._set_schedulable(pool, False, gpus)
        else:
            self._set_schedulable(pool, True, "")
        await asyncio.gather(*(self._spawn(pool, r) for r in new))

    def _released(self, r: Replica) -> None:
        self._free_gpus.update(r.gpu_ids)
        if r.gpu_ids and not self._closing:
            for waiting in list(self._pools.values()):
                if waiting.spec.gpus and len(waiting.active()) < waiting.desired:
                    self._background(self._fill(waiting))

    def _cpus(self, spec: ReplicaSpec) -> float:
        """The CPUs a replica of `spec` may use: its CPU limit, else an equal share of the cores
        among the gateway (one busy process) and every replica this engine runs or is starting,
        this one included. A replica keeps the share it started with."""
        if spec.cpus:
            return spec.cpus
        replicas = sum(len(pool.active()) for pool in self._pools.values())
        return self._cores / (1 + max(1, replicas))

    async def _launch(self, pool: Pool, r: Replica) -> ReplicaRun:
        spec = pool.spec
        folder = self.state_dir / "replicas" / r.id
        log_path = self.state_dir / "logs" / f"{r.id}.log"
        port_file = folder / "ports.json"
        repository = None if spec.models else folder / "models"
        command = proc.serve_command(
            self.python, spec, port_file, self.drain_timeout_s, repository, cpus=self._cpus(spec)
        )
        (repository or folder).mkdir(parents=True, exist_ok=True)
        port_file.unlink(missing_ok=True)
        log_start = proc.log_size(log_path)
        env = proc.replica_env(os.environ, spec, r.gpu_ids) | self._credentials_env(spec.revision)
        process = await proc.spawn(command, env, log_path)
        return _ProcessRun(process, port_file, log_path, log_start)
