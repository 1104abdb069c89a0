"""Running N training ranks as Ray actors anywhere in a Ray cluster, for `training.train_classifier`.

`run_ray_workers` keeps `_distributed.run_workers`'s contract (the same loop, rank 0's state dict
and history back, `on_epoch` in the calling process with the same stop-or-go, a worker's exception
re-raised with its traceback, WorkerFailed for a worker that dies) but runs each rank in a Ray
actor, through the same per-rank entry (`run_rank`):

- Placement: one placement group with a bundle per rank, `{"CPU": 1}`, or `{"GPU": 1, "CPU": 1}`
  on CUDA, strategy SPREAD: ranks go to different nodes where they can, and share nodes where they
  cannot. Rank 0's actor names its node's IP and a port free there: the rendezvous every rank
  joins (`MASTER_ADDR`, `MASTER_PORT`). A CUDA rank trains on the GPU Ray gave it
  (`CUDA_VISIBLE_DEVICES` holds just that one: `cuda:0`); `LOCAL_RANK` counts ranks per node.
- Data: the job (arrays included) is put in the object store once and every rank reads it from
  there: each node fetches it once, and ranks on a node share it.
- on_epoch: rank 0's actor is threaded; its loop queues each epoch and waits for a verdict, which
  the driver gives after fetching the epoch (`next_epoch`) and running `on_epoch`.
- Failures: the driver waits on every rank at once. A rank whose actor dies (its process killed,
  its node gone) fails the run with WorkerFailed naming the rank and its node; so does one that
  stops answering while a peer reports the lost connection that follows. Nothing restarts by
  itself: the other actors are killed, the placement group removed, and a re-run with the same
  checkpoint directory resumes after its last checkpoint.
- Files: the workers' nodes need not share the driver's filesystem. A `Mirror` gives every rank
  a private directory in place of the driver's (training's checkpoint_dir), seeded with the files
  to resume from, and moves what rank 0 writes there back to the driver with each epoch.

Ray is imported only by the functions that use it: it is an optional dependency.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import tempfile
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic

import torch

from serving.pipelines._distributed import (
    J,
    Loop,
    M,
    RemoteTraceback,
    WorkerFailed,
    free_port,
    portable,
    rebuild,
    run_rank,
)

__all__ = ["Mirror", "cluster_gpus", "connected", "run_ray_workers"]

#: how long the cluster may take to find room for every rank (an autoscaler adding nodes included).
PLACEMENT_TIMEOUT_S = 120.0
_START_TIMEOUT_S = 300.0  # how long the actors may take to start (a fresh worker imports torch)
_POLL_S = 1.0  # how often the driver wakes while nothing happens (to stay interruptible)
_PING_S = 10.0  # how long a live rank may take to answer, once a peer reports a lost connection
_JOIN_S = 30.0  # how long the other ranks may take to return once rank 0 has
_NAME = "servegate-train"  # the actors' and placement groups' names start with it


@dataclass(frozen=True)
class Mirror(Generic[J]):
    """A directory of the driver's that the loop writes on rank 0 and reads on every rank
    (training's checkpoint_dir), for workers on nodes that do not share the driver's filesystem.

    Every rank gets a private, temporary directory in its place, made by `relocate(job, directory)`
    (a module-level function, so that workers can unpickle it) and holding a copy of the `seed`
    files (read from the driver; a checkpoint to resume from). The files rank 0 writes there are
    moved to `path` after each epoch, before `on_epoch` sees it, and when rank 0 finishes."""

    path: Path
    relocate: Callable[[J, Path], J]
    seed: tuple[Path, ...] = ()


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[None]:
    """This process as a Ray driver for the block, joined as all of servegate joins
    (`serving.raycluster.connect`): an existing connection is kept as it is, else `address`
    (HOST:PORT, ray://HOST:PORT, "auto") is checked and joined, and None starts a local Ray, shut
    down after the block. Raises RayUnavailable (Ray missing or too old, the address malformed or
    unreachable) before anything starts."""
    from serving.raycluster import connect

    started = connect(address)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def cluster_gpus() -> float:
    """GPUs in the connected Ray cluster, busy or not."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def run_ray_workers(
    loop: Loop[J, M],
    job: J,
    world: int,
    backend: str,
    device: str,
    on_epoch: Callable[[M], None] | None,
    mirror: Mirror[J] | None = None,
) -> tuple[dict[str, torch.Tensor], list[M], list[str]]:
    """Run `world` ranks of `loop(job, ...)` as Ray actors of the connected cluster, relay rank 0's
    epochs to `on_epoch`, and return rank 0's (state dict, history) and each rank's node id.
    `device` is "cpu" (a CPU per rank) or "cuda" (a GPU per rank).

    An exception from `on_epoch` stops every rank after that epoch and is re-raised here; so is a
    worker's exception, with the worker's traceback as its cause. WorkerFailed: a worker died;
    TimeoutError: the cluster has no room for the workers (PLACEMENT_TIMEOUT_S)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    try:
        job_ref = ray.put(job)
    except (TypeError, ValueError, AttributeError, pickle.PicklingError) as exc:
        cause = exc.__cause__ or exc  # Ray's own message holds the whole job's repr, arrays included
        raise ValueError(
            f"model_fn cannot be sent to the Ray workers (cloudpickle): {type(cause).__name__}: {cause}"
        ) from None
    seed_ref = ray.put({p.name: p.read_bytes() for p in mirror.seed}) if mirror is not None else None
    bundle = {"GPU": 1, "CPU": 1} if device == "cuda" else {"CPU": 1}
    name = f"{_NAME}-{uuid.uuid4().hex[:8]}"
    group = placement_group([dict(bundle) for _ in range(world)], strategy="SPREAD", name=name)
    run = _Run(name, on_epoch, mirror)
    try:
        _wait_placed(group, world, bundle)
        run.start(group, world, bundle)
        port = ray.get(run.actors[0].free_port.remote())
        # LOCAL_RANK: the rank's index among the ranks on its node, as torchrun numbers them.
        local = [run.nodes[:rank].count(node) for rank, node in enumerate(run.nodes)]
        master = (run.ips[0], port)
        for rank, actor in enumerate(run.actors):
            ref = actor.run.remote(
                loop, job_ref, rank, world, backend, device, master, local[rank],
                mirror.relocate if mirror is not None else None, seed_ref,
            )  # fmt: skip
            run.pending[ref] = rank
        state, history, stopped_by = run.supervise()
    finally:
        run.stop()
        remove_placement_group(group)
    if stopped_by is not None:
        raise stopped_by
    return state, history, list(run.nodes)


def _wait_placed(group: Any, world: int, bundle: dict[str, int]) -> None:
    import ray

    ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
    if not ready:
        wanted = ("CPU", "GPU")
        total = {k: v for k, v in ray.cluster_resources().items() if k in wanted}
        free = {k: v for k, v in ray.available_resources().items() if k in wanted}
        raise TimeoutError(
            f"the Ray cluster found no room for {world} training workers ({bundle} each) in "
            f"{PLACEMENT_TIMEOUT_S:g}s: it has {total} in all, {free} free"
        )


class _Run:
    """The driver's side of one run: the actors, what they run, and the supervision."""

    def __init__(self, name: str, on_epoch: Callable[[Any], None] | None, mirror: Mirror | None) -> None:
        self.name = name
        self.on_epoch = on_epoch
        self.mirror = mirror
        self.actors: list[Any] = []
        self.nodes: list[str] = []  # node id by rank
        self.ips: list[str] = []
        self.pending: dict[Any, int] = {}  # run ObjectRef -> rank, until it returns

    def start(self, group: Any, world: int, bundle: dict[str, int]) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        actor_class = ray.remote(_Rank)
        for rank in range(world):
            self.actors.append(
                actor_class.options(
                    name=f"{self.name}-rank-{rank}",
                    num_cpus=bundle["CPU"],
                    num_gpus=bundle.get("GPU", 0),
                    max_concurrency=4,  # run, next_epoch (blocks), verdict, ping
                    max_restarts=0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        group, placement_group_bundle_index=rank
                    ),
                ).remote()
            )
        refs = [actor.where.remote() for actor in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=_START_TIMEOUT_S)
        if len(ready) < len(refs):
            raise WorkerFailed(f"training workers did not start within {_START_TIMEOUT_S:g}s")
        for rank, ref in enumerate(refs):
            try:
                node, ip = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                raise WorkerFailed(f"training worker {rank} could not start: {_reason(exc)}") from None
            self.nodes.append(node)
            self.ips.append(ip)

    def supervise(self) -> tuple[dict[str, torch.Tensor], list[Any], BaseException | None]:
        """Relay epochs until rank 0 returns: (state dict, history, what on_epoch raised, if anything).
        Raises a worker's error, or WorkerFailed for a worker that died."""
        import ray

        stopped_by: BaseException | None = None
        poll = self.actors[0].next_epoch.remote()
        while True:
            ready, _ = ray.wait([*self.pending, *([poll] if poll is not None else [])], timeout=_POLL_S)
            if not ready:
                continue
            (ref,) = ready
            if ref not in self.pending:  # rank 0's next epoch, or None: it has returned
                message = self._get(ref, 0)
                if message is None:
                    poll = None
                    continue
                metrics, files = message
                self._store(files)
                if stopped_by is None and self.on_epoch is not None:
                    try:
                        self.on_epoch(metrics)
                    except BaseException as exc:  # the workers stop cleanly; the caller gets exc
                        stopped_by = exc
                self.actors[0].verdict.remote(stopped_by is not None)
                poll = self.actors[0].next_epoch.remote()
                continue
            rank = self.pending.pop(ref)
            outcome = self._get(ref, rank)
            if outcome[0] == "error":
                self._raise_error(rank, *outcome[1:])
            if rank == 0:
                _, state, history, files = outcome
                self._store(files)
                # The others return as soon as they leave the group; let them, rather than kill them mid-way.
                ray.wait(list(self.pending), num_returns=len(self.pending), timeout=_JOIN_S)
                return state, history, stopped_by

    def _get(self, ref: Any, rank: int) -> Any:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            raise self._died(rank, exc) from None
        except ray.exceptions.RayTaskError as exc:  # the call's arguments failed to load on the worker
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            cause.add_note(f"(raised in training worker rank {rank} on node {self.nodes[rank]})")
            raise cause from RemoteTraceback(exc.traceback_str)

    def _died(self, rank: int, exc: BaseException) -> WorkerFailed:
        import ray

        where = f"training worker {rank} on node {self.nodes[rank]}"
        if isinstance(exc, ray.exceptions.ActorUnavailableError):
            # Ray cannot reach the actor, and has not (yet) heard that it died: its node is down or
            # cut off. It does not come back (max_restarts=0), and its peers cannot go on without it.
            failed = WorkerFailed(f"{where} is unreachable: its node is down or cut off")
            failed.add_note(f"(Ray: {_reason(exc)})")
            return failed
        return WorkerFailed(f"{where} died: {_reason(exc)}")

    def _raise_error(self, rank: int, blob: bytes | None, text: str) -> None:
        """Raise rank `rank`'s error, unless a peer is gone: the error is then most likely its
        consequence (a lost connection), and the peer's death is what to report."""
        import ray

        error = rebuild(rank, blob, text, self.nodes[rank])
        if len(self.actors) == 1:
            raise error from RemoteTraceback(text)
        pings = {actor.ping.remote(): peer for peer, actor in enumerate(self.actors) if peer != rank}
        answered, silent = ray.wait(list(pings), num_returns=len(pings), timeout=_PING_S)
        for ref in answered:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                dead = self._died(pings[ref], exc)
                break
        else:
            if not silent:
                raise error from RemoteTraceback(text)
            peer = pings[silent[0]]
            dead = WorkerFailed(
                f"training worker {peer} on node {self.nodes[peer]} is unreachable: it did not answer "
                f"for {_PING_S:g}s"
            )
        dead.add_note(f"(training worker {rank} then failed: {type(error).__name__}: {error})")
        raise dead from None

    def _store(self, files: dict[str, bytes]) -> None:
        """Write the files rank 0 sent into the mirrored directory, each in one piece."""
        if not files or self.mirror is None:
            return
        for name, data in files.items():
            if Path(name).name != name or name.startswith("."):
                raise WorkerFailed(
                    f"training worker 0 sent a file named {name!r}; only plain names are written"
                )
            target = self.mirror.path / name
            partial = target.with_name(f".{name}.part")
            partial.write_bytes(data)
            os.replace(partial, target)

    def stop(self) -> None:
        """Kill every actor and wait (a little) until Ray reports each one dead, so none outlives the call."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        for actor in self.actors:
            for _ in range(int(_JOIN_S / 0.1)):
                try:
                    ray.get(actor.ping.remote(), timeout=_PING_S)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    break
                time.sleep(0.1)


def _reason(exc: BaseException) -> str:
    """Why a RayActorError's actor died, without the actor's id, pid and class (tab-indented fields
    after a generic first line): WorkerFailed names the rank and node itself."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("The actor died unexpectedly"):
        kept = [line.strip() for line in lines[1:] if not line.startswith("\t")]
        if kept:
            return " ".join(kept)
    return lines[-1].strip() if lines else type(exc).__name__


class _Rank:
    """One rank, as a threaded Ray actor: `run` trains while the other methods answer the driver."""

    def __init__(self) -> None:
        self._epochs: queue.Queue[Any] = queue.Queue()  # rank 0: (metrics, files), then None
        self._verdicts: queue.Queue[bool] = queue.Queue()
        self._dir: Path | None = None
        self._seeded: set[str] = set()

    def where(self) -> tuple[str, str]:
        """(node id, node IP)."""
        import ray

        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    def free_port(self) -> int:
        return free_port("")  # every interface: the peers come from other nodes

    def ping(self) -> None:
        return None

    def next_epoch(self) -> tuple[Any, dict[str, bytes]] | None:
        """Rank 0's next epoch and the files written with it; None once `run` has returned."""
        return self._epochs.get()

    def verdict(self, stop: bool) -> None:
        self._verdicts.put(stop)

    def run(
        self,
        loop: Loop[J, M],
        job: J,
        rank: int,
        world: int,
        backend: str,
        device_kind: str,
        master: tuple[str, int],
        local_rank: int,
        relocate: Callable[[J, Path], J] | None,
        seed: dict[str, bytes] | None,
    ) -> tuple[Any, ...]:
        """("done", state, history, files) on rank 0, ("done", None, None, {}) on the others, or
        ("error", pickled exception, traceback). After an error the process group stays up: the driver
        has the error before any peer notices (see `run_rank`), and then kills the actors."""
        import ray

        try:
            with tempfile.TemporaryDirectory(prefix=f"{_NAME}-") as tmp:
                if relocate is not None:
                    self._dir = Path(tmp)
                    for name, data in (seed or {}).items():
                        (self._dir / name).write_bytes(data)
                    self._seeded = set(seed or {})
                    job = relocate(job, self._dir)
                if device_kind == "cuda":
                    if not torch.cuda.is_available():
                        raise RuntimeError(
                            f"device 'cuda' asked for, but this worker's node has no usable CUDA (torch "
                            f"{torch.__version__}, Ray GPU ids {ray.get_gpu_ids()}): train with device='cpu'"
                        )
                    device = torch.device("cuda", 0)  # the one GPU Ray made visible to this actor
                else:
                    device = torch.device("cpu")
                    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
                    torch.set_num_threads(max(1, int(cpus)))
                with warnings.catch_warnings():
                    # The arrays come from the object store, read-only; the loop never writes to them.
                    warnings.filterwarnings("ignore", "The given NumPy array is not writable")
                    state, history = run_rank(
                        loop, job, rank, world, backend, device, master, self._report, local_rank
                    )
                if rank != 0:
                    return ("done", None, None, {})
                return ("done", state, history, self._take_files())
        except BaseException as exc:
            return ("error", portable(exc), traceback.format_exc())
        finally:
            self._epochs.put(None)

    def _report(self, metrics: Any) -> bool:
        """Rank 0: hand the epoch (and the files written for it) to the driver and wait for its verdict."""
        self._epochs.put((metrics, self._take_files()))
        return self._verdicts.get()

    def _take_files(self) -> dict[str, bytes]:
        if self._dir is None:
            return {}
        files = {}
        for path in sorted(self._dir.iterdir()):
            if path.is_file() and path.name not in self._seeded:
                files[path.name] = path.read_bytes()
                path.unlink()  # moved: the driver has it now
        return files
