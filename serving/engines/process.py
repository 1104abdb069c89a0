"""ProcessEngine: every replica is a local `servegate model serve` process on loopback.

One background loop checks every replica's readiness each `health_interval_s`; a task per process
notices its exit at once. A replica is STARTING until its port file appears and `/v2/health/ready`
answers 200, READY until `failure_threshold` checks in a row fail (UNHEALTHY: killed, restarted) or
it exits (FAILED: restarted); restarts back off exponentially. Removed replicas turn DRAINING, and
the listeners hear it, before they get SIGTERM.

Files under `state_dir`: `logs/<replica-id>.log` (its stdout and stderr, appended across restarts) and
`replicas/<replica-id>/ports.json` (the port file; `models/` beside it for a pool with no start-up models).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import secrets
import signal
import string
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from serving.auth.internal import METRICS_ENV, REPLICA_TOKEN_ENV, InternalCredentials
from serving.engines import _replica_proc as proc
from serving.engines.base import Engine, PoolStatus, ReplicaInfo, ReplicaSpec, ReplicaState
from serving.engines.gpus import allocate, detect_gpus

__all__ = ["BACKOFF_RESET_S", "ProcessEngine", "backoff_delay", "pick_removals", "unschedulable_reason"]

log = logging.getLogger(__name__)

#: seconds a replica must stay ready before its restart backoff starts again from the initial delay.
BACKOFF_RESET_S = 30.0
#: seconds between fetches of a not-ready replica's model states (for its `reason`).
_INDEX_PERIOD_S = 2.0
#: seconds an unhealthy or stuck replica gets between SIGTERM and SIGKILL.
_KILL_GRACE_S = 5.0
#: seconds a drained replica gets beyond its own drain timeout before SIGKILL.
_DRAIN_SLACK_S = 5.0
_CHECK_TIMEOUT_S = 2.0
_EVENTS_KEPT = 20
_ID_CHARS = string.ascii_lowercase + string.digits

_LIVE = (ReplicaState.STARTING, ReplicaState.READY)
_WAITING = (ReplicaState.FAILED, ReplicaState.UNHEALTHY)


def backoff_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """Seconds to wait before restart `attempt` (0 for the first since the last reset): doubling
    from `initial_s`, never more than `max_s`."""
    return min(max_s, initial_s * 2 ** min(attempt, 64))


def pick_removals(replicas: Sequence[tuple[str, bool, float]], count: int) -> list[str]:
    """Ids of the `count` replicas a scale-down removes, from `(id, ready, created)` tuples: the ones
    that are not ready first (they serve nothing), then the newest (the oldest are proven and warm)."""
    ordered = sorted(replicas, key=lambda r: (r[1], -r[2]))
    return [replica_id for replica_id, _, _ in ordered[: max(0, count)]]


def unschedulable_reason(gpus_per_replica: int, total: int, free: int, placed: int, desired: int) -> str:
    """Why a pool's replicas cannot all be placed, in words a user acts on."""
    reason = (
        f"not schedulable: each replica needs {_plural(gpus_per_replica, 'GPU')} (nvidia.com/gpu); "
        f"this machine has {_plural(total, 'GPU')}, {free} free"
    )
    return reason + (f"; {placed} of {desired} replicas placed" if placed else "")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _exit_text(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"exited with code {code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"exited with code {code}"


@dataclass(eq=False)
class _Replica:
    id: str
    revision: str
    gpu_ids: tuple[int, ...]
    created: float
    dir: Path
    log: Path
    state: ReplicaState = ReplicaState.STARTING
    process: asyncio.subprocess.Process | None = None
    http_url: str | None = None
    grpc_target: str | None = None
    restarts: int = 0
    reason: str = "starting"
    #: failed models as the last repository index told (kept between index fetches).
    model_problems: str = ""
    started_at: float = 0.0
    ready_since: float = 0.0
    failed_checks: int = 0
    #: restarts since the backoff was last reset.
    attempt: int = 0
    restart_at: float = 0.0
    index_at: float = float("-inf")
    #: where the current run's output starts in `log`.
    log_start: int = 0
    drain: asyncio.Task[None] | None = None

    @property
    def port_file(self) -> Path:
        return self.dir / "ports.json"

    def info(self) -> ReplicaInfo:
        return ReplicaInfo(
            id=self.id,
            revision=self.revision,
            state=self.state,
            http_url=self.http_url,
            grpc_target=self.grpc_target,
            restarts=self.restarts,
            gpu_ids=self.gpu_ids,
            reason="" if self.state is ReplicaState.READY else self.reason,
        )


@dataclass(eq=False)
class _Pool:
    spec: ReplicaSpec
    desired: int = 0
    replicas: list[_Replica] = field(default_factory=list)
    schedulable: bool = True
    reason: str = ""
    events: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=_EVENTS_KEPT))

    def active(self) -> list[_Replica]:
        return [r for r in self.replicas if r.state is not ReplicaState.DRAINING]


class ProcessEngine(Engine):
    """Replicas as local processes.

    state_dir: where logs and port files go. python: the interpreter that runs `-m serving`.
    health_interval_s: seconds between readiness checks. failure_threshold: failed checks in a row
    that make a ready replica unhealthy. start_timeout_s: seconds a replica may take to become ready
    before it is killed and restarted. backoff_initial_s / backoff_max_s: restart delay bounds, in
    seconds. drain_timeout_s: seconds a replica waits for in-flight requests when stopped (it gets 5 s
    more before SIGKILL). gpus: GPU ids replicas may be given (None: every GPU detected at start).
    credentials: the gateway's internal tokens; each replica gets its pool's token and accepts only
    it (and the metrics token for /metrics). None: replicas are open (tests, a trusted machine).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        python: str = sys.executable,
        health_interval_s: float = 1.0,
        failure_threshold: int = 3,
        start_timeout_s: float = 300.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        drain_timeout_s: float = 30.0,
        gpus: list[int] | None = None,
        credentials: InternalCredentials | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.credentials = credentials
        self.python = python
        self.health_interval_s = health_interval_s
        self.failure_threshold = failure_threshold
        self.start_timeout_s = start_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.drain_timeout_s = drain_timeout_s
        self._gpus: tuple[int, ...] | None = None if gpus is None else tuple(gpus)
        self._free_gpus: set[int] = set()
        self._pools: dict[str, _Pool] = {}
        self._listeners: list[Callable[[str], None]] = []
        #: stops, drains and exit watchers still running; close() waits for every one.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._client: httpx.AsyncClient | None = None
        self._health: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def gpus(self) -> tuple[int, ...]:
        """The GPU ids the engine places replicas on (known once started)."""
        return self._gpus or ()

    def _credentials_env(self, revision: str) -> dict[str, str]:
        if self.credentials is None:
            return {}
        return {
            REPLICA_TOKEN_ENV: self.credentials.pool_token(revision),
            METRICS_ENV: self.credentials.metrics_token,
        }

    def _auth_headers(self, revision: str) -> dict[str, str]:
        if self.credentials is None:
            return {}
        return {"authorization": f"Bearer {self.credentials.pool_token(revision)}"}

    # -- Engine ------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        if self._gpus is None:
            self._gpus = tuple(gpu.index for gpu in await asyncio.to_thread(detect_gpus))
            log.info("GPUs for replicas: %s", ", ".join(map(str, self._gpus)) or "none")
        self._free_gpus = set(self._gpus)
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        # trust_env=False: a proxy from the environment must not sit between us and loopback replicas.
        self._client = httpx.AsyncClient(timeout=_CHECK_TIMEOUT_S, trust_env=False)
        self._health = asyncio.create_task(self._health_loop(), name="process-engine-health")

    async def scale(self, spec: ReplicaSpec, replicas: int) -> None:
        if self._client is None or self._closing:
            raise RuntimeError("ProcessEngine is not running: call start() first (and not after close())")
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, not {replicas}")
        pool = self._pools.get(spec.revision)
        if pool is None:
            pool = self._pools[spec.revision] = _Pool(spec)
        elif spec != pool.spec:
            log.debug("revision %s already runs; its spec is kept as first given", spec.revision)
        if replicas != pool.desired:
            self._event(pool, f"scaling from {pool.desired} to {replicas} replicas")
        pool.desired = replicas
        active = pool.active()
        if len(active) > replicas:
            candidates = [(r.id, r.state is ReplicaState.READY, r.created) for r in active]
            doomed = set(pick_removals(candidates, len(active) - replicas))
            for r in active:
                if r.id in doomed:
                    self._drain(pool, r)
        await self._place(pool)

    async def remove(self, revision: str) -> None:
        pool = self._pools.pop(revision, None)
        if pool is not None:
            pool.desired = 0
            await self._drain_all(pool)

    def status(self, revision: str) -> PoolStatus | None:
        pool = self._pools.get(revision)
        if pool is None:
            return None
        replicas = tuple(r.info() for r in pool.replicas)
        return PoolStatus(
            revision=revision,
            desired=pool.desired,
            ready=sum(r.ready for r in replicas),
            replicas=replicas,
            schedulable=pool.schedulable,
            reason=pool.reason,
            events=tuple(pool.events),
        )

    def watch(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    async def close(self) -> None:
        self._closing = True
        if self._health is not None:
            self._health.cancel()
            await asyncio.gather(self._health, return_exceptions=True)
        await asyncio.gather(*(self._drain_all(pool) for pool in self._pools.values()))
        self._pools.clear()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    # -- placement and draining --------------------------------------------------------------------

    async def _place(self, pool: _Pool) -> None:
        """Start replicas until the pool has `desired` (or the free GPUs run out)."""
        if self._closing:
            return
        spec, missing = pool.spec, pool.desired - len(pool.active())
        if spec.image is not None:
            reason = (
                f"not schedulable: the process engine runs model formats, not container images "
                f"({spec.image}); run custom containers on the kubernetes engine"
            )
            self._set_schedulable(pool, False, reason)
            return
        new: list[_Replica] = []
        for _ in range(missing):
            gpu_ids = allocate(self._free_gpus, spec.gpus) if spec.gpus else ()
            if gpu_ids is None:
                break
            self._free_gpus.difference_update(gpu_ids)
            new.append(self._new_replica(pool, gpu_ids))
        pool.replicas.extend(new)
        if len(new) < missing:
            placed = len(pool.active())
            gpus = unschedulable_reason(spec.gpus, len(self.gpus), len(self._free_gpus), placed, pool.desired)
            self._set_schedulable(pool, False, gpus)
        else:
            self._set_schedulable(pool, True, "")
        await asyncio.gather(*(self._spawn(pool, r) for r in new))

    def _new_replica(self, pool: _Pool, gpu_ids: tuple[int, ...]) -> _Replica:
        taken = {r.id for r in pool.replicas}
        replica_id = ""
        while not replica_id or replica_id in taken:
            replica_id = f"{pool.spec.revision}-{''.join(secrets.choice(_ID_CHARS) for _ in range(5))}"
        return _Replica(
            id=replica_id,
            revision=pool.spec.revision,
            gpu_ids=gpu_ids,
            created=time.monotonic(),
            dir=self.state_dir / "replicas" / replica_id,
            log=self.state_dir / "logs" / f"{replica_id}.log",
        )

    def _set_schedulable(self, pool: _Pool, schedulable: bool, reason: str) -> None:
        # One event per change, not per attempt: placement is retried only when GPUs free up or on scale().
        if (schedulable, reason) == (pool.schedulable, pool.reason):
            return
        pool.schedulable, pool.reason = schedulable, reason
        self._event(pool, reason if not schedulable else "schedulable again: every replica is placed")

    def _drain(self, pool: _Pool, r: _Replica) -> None:
        # DRAINING is announced before SIGTERM so that the router stops sending first.
        r.state, r.reason = ReplicaState.DRAINING, "draining"
        self._event(pool, f"replica {r.id} draining")
        self._notify(pool.spec.revision)
        r.drain = self._background(self._finish_drain(pool, r))

    async def _finish_drain(self, pool: _Pool, r: _Replica) -> None:
        code = None
        if r.process is not None:
            code = await proc.stop_process(r.process, self.drain_timeout_s + _DRAIN_SLACK_S)
        r.process = None
        pool.replicas.remove(r)
        self._free_gpus.update(r.gpu_ids)
        self._event(pool, f"replica {r.id} stopped" + (f" ({_exit_text(code)})" if code is not None else ""))
        self._notify(pool.spec.revision)
        if r.gpu_ids:
            for waiting in list(self._pools.values()):
                if waiting.spec.gpus and len(waiting.active()) < waiting.desired:
                    await self._place(waiting)

    async def _drain_all(self, pool: _Pool) -> None:
        for r in pool.active():
            self._drain(pool, r)
        await asyncio.gather(*(r.drain for r in list(pool.replicas) if r.drain is not None))

    # -- one replica's process ---------------------------------------------------------------------

    async def _spawn(self, pool: _Pool, r: _Replica) -> None:
        spec = pool.spec
        repository = None if spec.models else r.dir / "models"
        command = proc.serve_command(self.python, spec, r.port_file, self.drain_timeout_s, repository)
        restart = r.state in _WAITING
        try:
            (repository or r.dir).mkdir(parents=True, exist_ok=True)
            r.port_file.unlink(missing_ok=True)
            log_start = proc.log_size(r.log)
            env = proc.replica_env(os.environ, spec, r.gpu_ids) | self._credentials_env(spec.revision)
            process = await proc.spawn(command, env, r.log)
        except OSError as exc:
            if r.state is not ReplicaState.DRAINING:
                self._fail(pool, r, f"cannot start: {exc}")
            return
        if r.state is ReplicaState.DRAINING:  # removed while it was being started
            await proc.stop_process(process, _KILL_GRACE_S)
            return
        r.restarts += int(restart)
        r.process, r.state, r.reason, r.model_problems = process, ReplicaState.STARTING, "starting", ""
        r.started_at, r.failed_checks, r.index_at = time.monotonic(), 0, float("-inf")
        r.log_start = log_start
        on_gpus = f" on GPU {','.join(map(str, r.gpu_ids))}" if r.gpu_ids else ""
        again = f" (restart {r.restarts})" if restart else ""
        self._event(pool, f"replica {r.id} starting{on_gpus}{again}")
        self._notify(spec.revision)
        self._background(self._watch_exit(pool, r, process))

    async def _watch_exit(self, pool: _Pool, r: _Replica, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if r.process is not process:
            return
        r.process = None
        if r.state in _LIVE:  # not asked to stop: a crash (or someone else's kill)
            tail = proc.log_tail(r.log, start=r.log_start)
            self._fail(pool, r, _exit_text(code) + (f": {tail}" if tail else ""))

    def _fail(self, pool: _Pool, r: _Replica, reason: str, state: ReplicaState = ReplicaState.FAILED) -> None:
        """Take `r` out of service with `reason`; kill it if it still runs; restart it after the backoff."""
        delay = backoff_delay(r.attempt, self.backoff_initial_s, self.backoff_max_s)
        r.attempt += 1
        r.state, r.reason, r.restart_at = state, reason, time.monotonic() + delay
        r.http_url = r.grpc_target = None
        self._event(pool, f"replica {r.id} {reason}; restarting in {delay:g}s")
        self._notify(pool.spec.revision)
        if r.process is not None:
            self._background(proc.stop_process(r.process, _KILL_GRACE_S))

    # -- health ------------------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            now = time.monotonic()
            checks = [self._check(pool, r, now) for pool in list(self._pools.values()) for r in pool.replicas]
            for result in await asyncio.gather(*checks, return_exceptions=True):
                if isinstance(result, Exception):
                    log.error("replica check failed", exc_info=result)
            await asyncio.sleep(self.health_interval_s)

    async def _check(self, pool: _Pool, r: _Replica, now: float) -> None:
        if r.state in _WAITING:
            if r.process is None and now >= r.restart_at:
                await self._spawn(pool, r)
            return
        process, state = r.process, r.state
        if process is None or state not in _LIVE:
            return
        if r.http_url is None and (ports := proc.read_port_file(r.port_file)) is not None:
            r.http_url = f"http://127.0.0.1:{ports.http}"
            r.grpc_target = f"127.0.0.1:{ports.grpc}" if ports.grpc else None
            self._notify(pool.spec.revision)
        answered, error = await self._probe(r.http_url) if r.http_url else (False, "not listening yet")
        if r.process is not process or r.state is not state:  # exited or drained meanwhile
            return
        if error is None:
            r.failed_checks, r.reason, r.model_problems = 0, "", ""
            if state is ReplicaState.STARTING:
                r.state, r.ready_since = ReplicaState.READY, time.monotonic()
                self._event(pool, f"replica {r.id} ready at {r.http_url}")
                self._notify(pool.spec.revision)
            elif now - r.ready_since >= BACKOFF_RESET_S:
                r.attempt = 0
            return
        if answered and r.http_url and now - r.index_at >= _INDEX_PERIOD_S:
            # It answers but is not ready: its model states say why (only a responsive server is asked).
            r.index_at = now
            problems = await self._model_problems(r.http_url, r.revision)
            if r.process is not process or r.state is not state:
                return
            r.model_problems = problems
        if state is ReplicaState.STARTING:
            r.reason = r.model_problems or f"starting: {error}"
            if now - r.started_at > self.start_timeout_s:
                self._fail(pool, r, f"not ready after {self.start_timeout_s:g}s ({r.reason})")
            return
        r.failed_checks += 1
        last = r.model_problems or error
        r.reason = f"readiness check {r.failed_checks}/{self.failure_threshold} failed: {last}"
        if r.failed_checks >= self.failure_threshold:
            reason = f"unhealthy: {r.failed_checks} readiness checks failed in a row (last: {last})"
            self._fail(pool, r, reason, ReplicaState.UNHEALTHY)

    async def _probe(self, url: str) -> tuple[bool, str | None]:
        """(whether it answered at all, None when it is ready or else why not)."""
        assert self._client is not None
        try:
            response = await self._client.get(f"{url}/v2/health/ready")
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if response.status_code == 200:
            return True, None
        return True, f"/v2/health/ready answered {response.status_code}"

    async def _model_problems(self, url: str, revision: str) -> str:
        """The replica's models that are not ready, with their reasons ("" if none or unknown)."""
        assert self._client is not None
        try:
            entries = (
                await self._client.post(
                    f"{url}/v2/repository/index", json={}, headers=self._auth_headers(revision)
                )
            ).json()
        except (httpx.HTTPError, ValueError):
            return ""
        problems = [
            f"model {e.get('name')}: {e['state']}" + (f": {e['reason']}" if e.get("reason") else "")
            for e in entries if isinstance(e, dict) and e.get("state") not in (None, "READY")
        ]  # fmt: skip
        return "; ".join(problems)

    # -- plumbing ----------------------------------------------------------------------------------

    def _event(self, pool: _Pool, message: str) -> None:
        pool.events.append(f"{time.strftime('%H:%M:%S')} {message}")
        log.info("%s: %s", pool.spec.revision, message)

    def _notify(self, revision: str) -> None:
        for listener in self._listeners:
            try:
                listener(revision)
            except Exception:
                log.exception("engine listener %r failed", listener)

    def _background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("engine task failed", exc_info=exc)
