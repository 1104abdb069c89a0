"""Running N training ranks as processes and supervising them, for `training.train_classifier`.

`run_workers` spawns one process per rank, set up the way a PyTorchJob sets up its pods
(`MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE` in the environment), joins them into a
torch.distributed process group and runs the training loop it is given in each. Rank 0 hands every
epoch's metrics to the parent over a queue and waits for a verdict (stop or go), so the caller's
`on_epoch` runs in the calling process; the parent re-raises a worker's exception with its
traceback, and never hangs on a worker that died silently: it raises WorkerFailed and kills the
rest.

`run_rank` is one rank's side of it (environment, process group, loop), shared with the Ray
placement in `_ray_distributed`, as are `WorkerFailed` and the way a worker's exception travels
(`portable`, `rebuild`, `RemoteTraceback`).

This is kept apart from the loop because none of it is about training: it is process plumbing,
and the loop runs just as well in a world of one without it. The loop is passed in rather than
imported, so this module does not import `training` (which imports it); the workers run
module-level functions, so spawned processes can unpickle them.
"""

from __future__ import annotations

import functools
import os
import pickle
import queue
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import distributed as dist
from torch import multiprocessing as mp

__all__ = [
    "Loop",
    "RemoteTraceback",
    "WorkerFailed",
    "free_port",
    "portable",
    "rebuild",
    "run_rank",
    "run_workers",
]

_POLL_S = 0.2  # how often the parent looks at its workers while no message comes
_GRACE_S = 2.0  # how long a dead worker's error report may trail its exit
_JOIN_S = 30.0  # how long workers that finished may take to exit
#: how long a rank waits in a collective: for slower peers, and for the parent's on_epoch.
_COLLECTIVE_TIMEOUT = timedelta(minutes=30)

J = TypeVar("J")  # the job: everything the loop needs, picklable
M = TypeVar("M")  # one epoch's metrics, picklable

#: `loop(job, rank, world, device, report) -> (state_dict, history)`: trains as `rank` of `world`
#: once the process group is up; `report(metrics)` is called on rank 0 after each epoch and says
#: whether to stop. Must be a module-level function.
Loop = Callable[[J, int, int, torch.device, Callable[[M], bool]], tuple[dict[str, torch.Tensor], list[M]]]


class WorkerFailed(RuntimeError):
    """A training worker died without reporting an exception (killed, crashed in native code)."""

    # Public as serving.pipelines.training.WorkerFailed, which re-exports it: name it so in
    # tracebacks and pickles.
    __module__ = "serving.pipelines.training"


class RemoteTraceback(Exception):
    """A worker's traceback, as the `__cause__` of its re-raised exception (as concurrent.futures does)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def run_workers(
    loop: Loop[J, M],
    job: J,
    world: int,
    backend: str | None,
    device: str,
    on_epoch: Callable[[M], None] | None,
) -> tuple[dict[str, torch.Tensor], list[M]]:
    """Spawn `world` ranks running `loop(job, ...)`, relay rank 0's epochs to `on_epoch`, and return
    rank 0's (state dict, history). `device` is "cpu" or "cuda" (rank N trains on GPU N).

    An exception from `on_epoch` stops every rank after that epoch and is re-raised here; so is a
    worker's exception, with the worker's traceback as its cause."""
    ctx = mp.get_context("spawn")  # fork would copy the parent's threads and CUDA state
    results, verdicts = ctx.Queue(), ctx.Queue()
    finished, stopped_by = False, None
    with tempfile.TemporaryDirectory(prefix="servegate-train-") as tmp:
        final = Path(tmp) / "final.pt"
        port = free_port()
        procs = [
            ctx.Process(
                target=_worker,
                args=(loop, job, rank, world, backend, device, port, results, verdicts, final),
                name=f"train-rank-{rank}",
                daemon=True,
            )
            for rank in range(world)
        ]
        try:
            for proc in procs:
                proc.start()
            history, stopped_by = _supervise(procs, results, verdicts, on_epoch)
            finished = True
            state = torch.load(final, weights_only=True) if stopped_by is None else {}
        finally:
            _reap(procs, grace=_JOIN_S if finished else 0.0)
            verdicts.cancel_join_thread()  # rank 0 may be gone with a verdict unread
            results.close()
    if stopped_by is not None:
        raise stopped_by
    return state, history


def _supervise(
    procs: list[BaseProcess],
    results: mp.Queue,
    verdicts: mp.Queue,
    on_epoch: Callable[[M], None] | None,
) -> tuple[list[M], BaseException | None]:
    """Read the workers' messages until rank 0 is done: (history, what on_epoch raised, if anything).
    Raises a worker's error, or WorkerFailed for a worker that died without one."""
    stopped_by: BaseException | None = None
    dead_since: float | None = None
    while True:
        try:
            kind, payload = results.get(timeout=_POLL_S)
        except queue.Empty:
            # Rank 0 exiting at all before "done" is a failure; other ranks may finish first.
            dead = [p for i, p in enumerate(procs) if p.exitcode is not None and (p.exitcode or i == 0)]
            if dead:
                dead_since = dead_since or time.monotonic()
                if time.monotonic() - dead_since > _GRACE_S:
                    raise WorkerFailed(
                        f"training worker {dead[0].name} {_exit_reason(dead[0].exitcode)}"
                    ) from None
            continue
        if kind == "epoch":
            if stopped_by is None and on_epoch is not None:
                try:
                    on_epoch(payload)
                except BaseException as exc:  # the workers stop cleanly; the caller gets exc
                    stopped_by = exc
            verdicts.put(stopped_by is not None)
        elif kind == "error":
            rank, blob, text = payload
            exc = rebuild(rank, blob, text)
            # A rank killed by a signal reports nothing; its peers' errors ("connection closed") are
            # what arrives, so name the likelier culprit. The pause lets its exit register.
            time.sleep(_POLL_S)
            for proc in procs:
                if proc.exitcode is not None and proc.exitcode < 0:
                    exc.add_note(
                        f"({proc.name} {_exit_reason(proc.exitcode)}: the error above may follow from it)"
                    )
            raise exc from RemoteTraceback(text)
        else:  # "done"
            return payload, stopped_by


def run_rank(
    loop: Loop[J, M],
    job: J,
    rank: int,
    world: int,
    backend: str | None,
    device: torch.device,
    master: tuple[str, int],
    report: Callable[[M], bool],
    local_rank: int | None = None,
) -> tuple[dict[str, torch.Tensor], list[M]]:
    """Run `loop` as `rank` of `world` in this process, set up as a PyTorchJob pod would be: the
    environment (`MASTER_ADDR`, `MASTER_PORT`, `RANK`, `LOCAL_RANK`, `WORLD_SIZE`), then the process
    group at `master` (rank 0's host and a port free there), then the loop, on `device`.

    Shared by every placement (local processes, Ray actors). The group is left only when the loop
    returns: after an error the caller must report it first and leave (or exit) afterwards, since the
    peers notice a departure at once and report their own, secondary, errors, which must not arrive
    first."""
    os.environ.update(
        MASTER_ADDR=master[0],
        MASTER_PORT=str(master[1]),
        RANK=str(rank),
        LOCAL_RANK=str(rank if local_rank is None else local_rank),
        WORLD_SIZE=str(world),
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=_COLLECTIVE_TIMEOUT)
    result = loop(job, rank, world, device, report)
    dist.destroy_process_group()
    return result


def _worker(
    loop: Loop[J, M],
    job: J,
    rank: int,
    world: int,
    backend: str | None,
    device_kind: str,
    port: int,
    results: mp.Queue,
    verdicts: mp.Queue,
    final: Path,
) -> None:
    """One rank, in its own process on this machine."""
    if device_kind == "cuda":
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, _cpus() // world))  # the ranks share the cores
    try:
        master = ("127.0.0.1", port)
        report = functools.partial(_report, results, verdicts)
        state, history = run_rank(loop, job, rank, world, backend, device, master, report)
        if rank == 0:
            torch.save(state, final)
            results.put(("done", history))
    except BaseException as exc:
        results.put(("error", (rank, portable(exc), traceback.format_exc())))
        # Flush the report before leaving the group (see run_rank).
        results.close()
        results.join_thread()
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _report(results: mp.Queue, verdicts: mp.Queue, metrics: Any) -> bool:
    """Rank 0: hand the epoch to the parent and wait for its verdict (True: stop)."""
    results.put(("epoch", metrics))
    while True:
        try:
            return verdicts.get(timeout=1.0)
        except queue.Empty:
            parent = mp.parent_process()
            if parent is not None and not parent.is_alive():
                raise RuntimeError("the process that started training is gone") from None


def portable(exc: BaseException) -> bytes | None:
    """`exc` pickled, if it survives the round trip (some exception classes do not)."""
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)
    except Exception:
        return None
    return blob


def rebuild(rank: int, blob: bytes | None, text: str, node: str | None = None) -> BaseException:
    """The exception `portable` made of a worker's error (WorkerFailed with the traceback's last line
    if it did not survive pickling), with a note naming the rank and, where known, its node."""
    try:
        exc = pickle.loads(blob) if blob is not None else None
    except Exception:
        exc = None
    if not isinstance(exc, BaseException):
        exc = WorkerFailed(text.strip().splitlines()[-1])
    exc.add_note(f"(raised in training worker rank {rank}{f' on node {node}' if node else ''})")
    return exc


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by signal {-code}"
    return f"exited with code {code} without reporting an error"


def _reap(procs: list[BaseProcess], grace: float) -> None:
    """Wait up to `grace` seconds for the workers to exit, then kill whichever have not."""
    deadline = time.monotonic() + grace
    for proc in procs:
        if proc.pid is not None:
            proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.pid is not None and proc.is_alive():
            proc.kill()  # blocked in a collective with a dead peer: it would wait out the timeout
            proc.join()


def _cpus() -> int:
    """CPUs this process may run on (a container's limit, not the host's count, where known)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` right now ("" for every interface; another process could take it before
    rank 0 binds it: the rendezvous then fails with an error rather than hanging)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
