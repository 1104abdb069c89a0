"""`--workers N`: several replica processes behind the same ports, acting as one server.

The supervisor binds the HTTP socket once and hands it to N spawned workers (gRPC binds with
SO_REUSEPORT); every worker holds every model. What one worker is asked must hold for all:

- Repository load/unload: the worker that receives it asks the supervisor, which sends it to every
  worker and answers once all have applied it. The supervisor keeps the log of such changes; a
  worker it (re)starts replays that log after loading its models, then applies, in order, the
  changes that arrived meanwhile (so a change made during a restart returns once the restarted
  worker has it too), and then reports "started".
- Metrics: prometheus-client's multiprocess mode adds up every worker's counters and histograms.
- A worker that dies is restarted; SIGTERM/SIGINT drains every worker, then the supervisor exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from predictors.spec import ModelSpec
from serving.errors import ErrorKind, ServingError

__all__ = ["SupervisorLink", "run_workers"]

log = logging.getLogger(__name__)

#: workers dying before they report "started", in a row, after which the supervisor gives up.
_MAX_STARTUP_FAILURES = 3


# -- worker side -------------------------------------------------------------------------------------


class SupervisorLink:
    """Repository control for a worker: load/unload go through the supervisor to every worker."""

    def __init__(self, conn: Connection, repository: Any, index: int) -> None:
        self._conn = conn
        self._repository = repository
        self._ids = ((index, n) for n in itertools.count())
        self._pending: dict[tuple[int, int], asyncio.Future[tuple[str, str] | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: changes that arrive before start-up is over wait here, so they land after the replay.
        self._backlog: list[tuple[tuple[int, int], str, str]] | None = []
        asyncio.get_running_loop().add_reader(conn.fileno(), self._on_message)

    async def start(self, models_loaded: asyncio.Event, replay: list[tuple[str, str]]) -> None:
        """After the start-up models load: replay the supervisor's log, then the backlog; report started."""
        await models_loaded.wait()
        for op, name in replay:
            error = await apply_op(self._repository, op, name)
            if error is not None:
                log.warning("replaying %s %s: %s", op, name, error[1])
        while self._backlog:
            await self._apply(*self._backlog.pop(0))
        self._backlog = None
        self._conn.send(("started",))

    async def load(self, name: str) -> None:
        await self._request("load", name)

    async def unload(self, name: str) -> None:
        await self._request("unload", name)

    async def _request(self, op: str, name: str) -> None:
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._conn.send(("request", request_id, op, name))
        error = await future
        if error is not None:
            kind, message = error
            raise ServingError(message, ErrorKind[kind])

    def _on_message(self) -> None:
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self._conn.fileno())
            return
        if message[0] == "apply":
            if self._backlog is not None:
                self._backlog.append(message[1:])
                return
            task = asyncio.get_running_loop().create_task(self._apply(*message[1:]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif message[0] == "done":
            future = self._pending.pop(message[1], None)
            if future is not None and not future.done():
                future.set_result(message[2])

    async def _apply(self, request_id: tuple[int, int], op: str, name: str) -> None:
        error = await apply_op(self._repository, op, name)
        self._conn.send(("applied", request_id, error))


async def apply_op(repository: Any, op: str, name: str) -> tuple[str, str] | None:
    try:
        await getattr(repository, op)(name)
    except ServingError as exc:
        return exc.kind.name, exc.message
    return None


def _worker_main(
    options: Any,
    specs: list[ModelSpec],
    template: ModelSpec,
    sock: socket.socket,
    conn: Connection,
    index: int,
    replay: list[tuple[str, str]],
    log_level: str,
) -> None:
    import uvloop

    from predictors.server.replica import Replica
    from serving.cli._serve import prepare_process

    prepare_process(log_level)
    replica = Replica(options, specs, template)

    async def main() -> None:
        link = SupervisorLink(conn, replica.repository, index)
        replica.dataplane.control = link
        starting = asyncio.get_running_loop().create_task(link.start(replica.models_loaded, replay))
        await replica.run(http_socket=sock)
        starting.cancel()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


# -- supervisor side ---------------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    process: Any
    conn: Connection
    #: set once the worker has loaded its models and caught up with the change log.
    started: bool = False


@dataclass
class _Broadcast:
    origin: int
    waiting: set[int]
    error: tuple[str, str] | None = None


@dataclass
class _Supervisor:
    options: Any
    specs: list[ModelSpec]
    template: ModelSpec
    count: int
    log_level: str
    sock: socket.socket = field(init=False)
    workers: dict[int, _Worker] = field(default_factory=dict)
    ops: list[tuple[str, str]] = field(default_factory=list)
    pending: dict[tuple[int, int], _Broadcast] = field(default_factory=dict)
    stopping: bool = False
    startup_failures: int = 0
    exit_status: int = 0

    def __post_init__(self) -> None:
        self.context = multiprocessing.get_context("spawn")

    def start(self, index: int) -> None:
        parent, child = self.context.Pipe()
        process = self.context.Process(
            target=_worker_main,
            args=(
                self.options,
                self.specs,
                self.template,
                self.sock,
                child,
                index,
                list(self.ops),
                self.log_level,
            ),
            name=f"servegate-worker-{index}",
        )
        process.start()
        child.close()
        self.workers[index] = _Worker(index, process, parent)
        log.info("worker %d started (pid %d)", index, process.pid)

    def run(self) -> None:
        for index in range(self.count):
            self.start(index)
        while self.workers:
            by_handle: dict[Any, _Worker] = {}
            for worker in self.workers.values():
                by_handle[worker.conn] = worker
                by_handle[worker.process.sentinel] = worker
            for handle in wait(list(by_handle), timeout=0.5):
                worker = by_handle[handle]
                if handle is worker.conn:
                    self.receive(worker)
                elif worker.index in self.workers:
                    self.reap(worker)
            if self.stopping:
                self.stop_all()

    def receive(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            return  # the sentinel reports the death
        if message[0] == "started":
            worker.started = True
            self.startup_failures = 0
        elif message[0] == "request":
            _, request_id, op, name = message
            self.ops.append((op, name))
            self.pending[request_id] = _Broadcast(worker.index, set(self.workers))
            for each in self.workers.values():
                with contextlib.suppress(OSError):
                    each.conn.send(("apply", request_id, op, name))
        elif message[0] == "applied":
            _, request_id, error = message
            self.settle(request_id, worker.index, error)

    def settle(self, request_id: tuple[int, int], index: int, error: tuple[str, str] | None) -> None:
        broadcast = self.pending.get(request_id)
        if broadcast is None:
            return
        broadcast.waiting.discard(index)
        if error is not None and (broadcast.error is None or index == broadcast.origin):
            broadcast.error = error
        if not broadcast.waiting:
            del self.pending[request_id]
            origin = self.workers.get(broadcast.origin)
            if origin is not None:
                with contextlib.suppress(OSError):
                    origin.conn.send(("done", request_id, broadcast.error))

    def reap(self, worker: _Worker) -> None:
        worker.process.join()
        del self.workers[worker.index]
        worker.conn.close()
        _mark_dead(worker.process.pid)
        for request_id in list(self.pending):
            self.settle(request_id, worker.index, None)
        if self.stopping:
            return
        code = worker.process.exitcode
        if not worker.started:
            self.startup_failures += 1
            if self.startup_failures >= _MAX_STARTUP_FAILURES:
                log.error("workers keep failing at start-up (last exit status %s); stopping", code)
                self.stopping, self.exit_status = True, 1
                return
        log.error(
            "worker %d (pid %d) exited with status %s; restarting it", worker.index, worker.process.pid, code
        )
        self.start(worker.index)

    def stop_all(self) -> None:
        for worker in self.workers.values():
            if worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
        deadline = self.options.drain_timeout_s + 10.0
        for worker in list(self.workers.values()):
            worker.process.join(deadline)
            if worker.process.is_alive():
                log.warning("worker %d did not stop in time; killing it", worker.index)
                worker.process.kill()
                worker.process.join()
            self.workers.pop(worker.index, None)


def _mark_dead(pid: int | None) -> None:
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def run_workers(options: Any, specs: list[ModelSpec], template: ModelSpec, count: int, log_level: str) -> int:
    """Run `count` workers until SIGTERM/SIGINT; returns the exit status."""
    from predictors.server.replica import bind_socket

    metrics_dir = tempfile.mkdtemp(prefix="servegate-metrics-")
    # Workers inherit the variable and so keep their metrics in shared files (multiprocess mode).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    supervisor = _Supervisor(options, specs, template, count, log_level)
    supervisor.sock = bind_socket(options.host, options.http_port)

    def request_stop(signum: int, frame: object) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        supervisor.run()
    finally:
        supervisor.sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("all workers stopped")
    return supervisor.exit_status
