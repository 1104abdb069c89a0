"""The replica-pool lifecycle every engine shares: scaling, draining, readiness checks and restarts.

An engine says how one replica runs (`_launch` returns a `ReplicaRun`: a local process, a Ray actor)
and where replicas may go (`_place`); this base does the rest, the same way for every engine. One
background loop checks every replica's readiness each `health_interval_s`; a task per run notices
its end at once. A replica is PENDING while it has no place to run, STARTING until it listens and
`/v2/health/ready` answers 200, READY until `failure_threshold` checks in a row fail (UNHEALTHY:
stopped, restarted) or its run ends (FAILED: restarted); restarts back off exponentially. Removed
replicas turn DRAINING, and the listeners hear it, before they are stopped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import signal
import string
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from serving.auth.internal import METRICS_ENV, REPLICA_TOKEN_ENV, InternalCredentials
from serving.engines.base import Engine, PoolStatus, ReplicaInfo, ReplicaSpec, ReplicaState

__all__ = [
    "BACKOFF_RESET_S",
    "Endpoints",
    "PoolEngine",
    "ReplicaRun",
    "backoff_delay",
    "exit_text",
    "pick_removals",
]

log = logging.getLogger(__name__)

#: seconds a replica must stay ready before its restart backoff starts again from the initial delay.
BACKOFF_RESET_S = 30.0
#: seconds between fetches of a not-ready replica's model states (for its `reason`).
_INDEX_PERIOD_S = 2.0
#: seconds an unhealthy or stuck replica gets between SIGTERM and SIGKILL.
KILL_GRACE_S = 5.0
#: seconds a drained replica gets beyond its own drain timeout before SIGKILL.
_DRAIN_SLACK_S = 5.0
_CHECK_TIMEOUT_S = 2.0
_EVENTS_KEPT = 20
_ID_CHARS = string.ascii_lowercase + string.digits

_LIVE = (ReplicaState.PENDING, ReplicaState.STARTING, ReplicaState.READY)
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


def exit_text(code: int) -> str:
    """How a process ended, for people: `exited with code -9 (SIGKILL)`."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"exited with code {code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"exited with code {code}"


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where a replica's servers listen: `http://HOST:PORT`, `HOST:PORT` (None: no gRPC)."""

    http_url: str
    grpc_target: str | None


class ReplicaRun(ABC):
    """One run of one replica (a process, an actor), as `_launch` started it."""

    #: where it runs, for people (a host name, a Ray node); "" while unknown.
    node: str = ""
    #: found running from an earlier gateway, not started by this one.
    adopted: bool = False

    def placed(self) -> bool:
        """Whether it has somewhere to run yet (a process always has; an actor once scheduled)."""
        return True

    @abstractmethod
    async def endpoints(self) -> Endpoints | None:
        """Where it listens, once both servers do; None before."""

    @abstractmethod
    async def wait(self) -> str:
        """Wait until it ends by itself; says how, for people (an exit code, the last lines it logged)."""

    @abstractmethod
    async def stop(self, grace_s: float) -> str | None:
        """Stop it: SIGTERM, `grace_s` seconds to finish, then SIGKILL. How it ended, if known."""

    async def log_lines(self, lines: int) -> list[str]:
        """The last `lines` lines it logged (its stdout and stderr), oldest first."""
        return []


@dataclass(eq=False)
class Replica:
    id: str
    revision: str
    gpu_ids: tuple[int, ...]
    created: float
    state: ReplicaState = ReplicaState.STARTING
    run: ReplicaRun | None = None
    http_url: str | None = None
    grpc_target: str | None = None
    node: str = ""
    restarts: int = 0
    reason: str = "starting"
    #: failed models as the last repository index told (kept between index fetches).
    model_problems: str = ""
    launched_at: float = 0.0
    started_at: float = 0.0
    ready_since: float = 0.0
    failed_checks: int = 0
    #: restarts since the backoff was last reset.
    attempt: int = 0
    restart_at: float = 0.0
    index_at: float = float("-inf")
    drain: asyncio.Task[None] | None = None

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
            node=self.node,
        )


@dataclass(eq=False)
class Pool:
    spec: ReplicaSpec
    desired: int = 0
    replicas: list[Replica] = field(default_factory=list)
    schedulable: bool = True
    reason: str = ""
    events: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=_EVENTS_KEPT))

    def active(self) -> list[Replica]:
        return [r for r in self.replicas if r.state is not ReplicaState.DRAINING]


class PoolEngine(Engine):
    """The shared lifecycle; subclasses implement `_launch` and `_place` (and may refine the hooks).

    health_interval_s: seconds between readiness checks. failure_threshold: failed checks in a row
    that make a ready replica unhealthy. start_timeout_s: seconds a placed replica may take to become
    ready before it is stopped and restarted. backoff_initial_s / backoff_max_s: restart delay
    bounds, in seconds. drain_timeout_s: seconds a replica waits for in-flight requests when stopped
    (it gets 5 s more before SIGKILL). credentials: the gateway's internal tokens; each replica gets
    its pool's token and accepts only it (and the metrics token for /metrics). None: replicas are
    open (tests, a trusted machine).
    """

    #: what the engine is called in messages ("process engine").
    label = "engine"
    #: whether replicas run on several machines: their problems then say which node they are on.
    multi_node = False

    def __init__(
        self,
        *,
        health_interval_s: float = 1.0,
        failure_threshold: int = 3,
        start_timeout_s: float = 300.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        drain_timeout_s: float = 30.0,
        credentials: InternalCredentials | None = None,
    ) -> None:
        self.credentials = credentials
        self.health_interval_s = health_interval_s
        self.failure_threshold = failure_threshold
        self.start_timeout_s = start_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.drain_timeout_s = drain_timeout_s
        self._pools: dict[str, Pool] = {}
        self._listeners: list[Callable[[str], None]] = []
        #: stops, drains and end watchers still running; close() waits for every one.
        self._tasks: set[asyncio.Task[Any]] = set()
        #: the tasks waiting for each run's end (a subset of `_tasks`).
        self._watchers: set[asyncio.Task[Any]] = set()
        self._client: httpx.AsyncClient | None = None
        self._health: asyncio.Task[None] | None = None
        self._closing = False

    # -- what an engine provides ------------------------------------------------------------------

    @abstractmethod
    async def _launch(self, pool: Pool, r: Replica) -> ReplicaRun:
        """Start one run of `r` (raises OSError, or RuntimeError, with a reason when it cannot)."""

    @abstractmethod
    async def _place(self, pool: Pool) -> None:
        """Add replicas (`_new_replica`, then `_spawn`) until the pool has `desired`, or say why not
        (`_set_schedulable`). Called through `_fill`, never for a pool of container images."""

    def _released(self, r: Replica) -> None:
        """`r` stopped for good: give back what it held (GPUs)."""

    async def _pending(self, pool: Pool, r: Replica) -> str:
        """Why `r`, launched but not placed yet, waits (its `reason`)."""
        return "waiting to be placed"

    async def _after_checks(self) -> None:
        """Run after each round of readiness checks."""

    def _where(self, r: Replica) -> str:
        """Where a starting replica runs, for its event (" on GPU 0")."""
        return f" on GPU {','.join(map(str, r.gpu_ids))}" if r.gpu_ids else ""

    # -- Engine ------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        # trust_env=False: a proxy from the environment must not sit between us and the replicas.
        self._client = httpx.AsyncClient(timeout=_CHECK_TIMEOUT_S, trust_env=False)
        self._health = asyncio.create_task(self._health_loop(), name=f"{self.label}-health")

    async def scale(self, spec: ReplicaSpec, replicas: int) -> None:
        if self._client is None or self._closing:
            raise RuntimeError(f"the {self.label} is not running: call start() first (and not after close())")
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, not {replicas}")
        pool = self._pools.get(spec.revision)
        if pool is None:
            pool = self._pools[spec.revision] = Pool(spec)
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
        if not self._closing:
            await self._fill(pool)

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

    async def replica_log(self, revision: str, replica_id: str, lines: int) -> list[str] | None:
        pool = self._pools.get(revision)
        found = next((r for r in pool.replicas if r.id == replica_id), None) if pool else None
        if found is None:
            return None
        return await found.run.log_lines(lines) if found.run is not None else []

    async def close(self) -> None:
        self._closing = True
        await self._stop_checks()
        await asyncio.gather(*(self._drain_all(pool) for pool in self._pools.values()))
        self._pools.clear()
        await self._finish_tasks()

    async def _stop_checks(self) -> None:
        if self._health is not None:
            self._health.cancel()
            await asyncio.gather(self._health, return_exceptions=True)

    async def _finish_tasks(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    # -- tokens ------------------------------------------------------------------------------------

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

    # -- placement and draining --------------------------------------------------------------------

    def _new_replica(self, pool: Pool, gpu_ids: tuple[int, ...] = (), replica_id: str = "") -> Replica:
        taken = {r.id for r in pool.replicas}
        while not replica_id or replica_id in taken:
            replica_id = f"{pool.spec.revision}-{''.join(secrets.choice(_ID_CHARS) for _ in range(5))}"
        r = Replica(id=replica_id, revision=pool.spec.revision, gpu_ids=gpu_ids, created=time.monotonic())
        pool.replicas.append(r)
        return r

    async def _fill(self, pool: Pool) -> None:
        """`_place` the pool's missing replicas; a pool of container images is refused first."""
        if pool.spec.image is not None:
            reason = (
                f"not schedulable: the {self.label} runs model formats, not container images "
                f"({pool.spec.image}); run custom containers on the kubernetes engine"
            )
            self._set_schedulable(pool, False, reason)
            return
        await self._place(pool)

    def _set_schedulable(self, pool: Pool, schedulable: bool, reason: str) -> None:
        # One event per change, not per attempt.
        if (schedulable, reason) == (pool.schedulable, pool.reason):
            return
        pool.schedulable, pool.reason = schedulable, reason
        self._event(pool, reason if not schedulable else "schedulable again: every replica is placed")
        self._notify(pool.spec.revision)

    def _drain(self, pool: Pool, r: Replica) -> None:
        # DRAINING is announced before the stop so that the router stops sending first.
        r.state, r.reason = ReplicaState.DRAINING, "draining"
        self._event(pool, f"replica {r.id} draining")
        self._notify(pool.spec.revision)
        r.drain = self._background(self._finish_drain(pool, r))

    async def _finish_drain(self, pool: Pool, r: Replica) -> None:
        ended = None
        if r.run is not None:
            ended = await r.run.stop(self.drain_timeout_s + _DRAIN_SLACK_S)
        r.run = None
        pool.replicas.remove(r)
        self._event(pool, f"replica {r.id} stopped" + (f" ({ended})" if ended else ""))
        self._notify(pool.spec.revision)
        self._released(r)

    async def _drain_all(self, pool: Pool) -> None:
        for r in pool.active():
            self._drain(pool, r)
        await asyncio.gather(*(r.drain for r in list(pool.replicas) if r.drain is not None))

    # -- one replica's run -------------------------------------------------------------------------

    async def _spawn(self, pool: Pool, r: Replica) -> None:
        restart = r.state in _WAITING
        try:
            run = await self._launch(pool, r)
        except (OSError, RuntimeError) as exc:
            if r.state is not ReplicaState.DRAINING:
                self._fail(pool, r, f"cannot start: {exc}")
            return
        if r.state is ReplicaState.DRAINING:  # removed while it was being started
            await run.stop(KILL_GRACE_S)
            return
        r.restarts += int(restart)
        r.run, r.model_problems, r.node = run, "", run.node
        r.state = ReplicaState.STARTING if run.placed() else ReplicaState.PENDING
        r.reason = "starting" if run.placed() else "waiting to be placed"
        r.launched_at = r.started_at = time.monotonic()
        r.failed_checks, r.index_at = 0, float("-inf")
        if run.adopted:
            where = f" on {run.node}" if run.node else ""
            self._event(pool, f"replica {r.id} found running{where}: re-attached")
        else:
            again = f" (restart {r.restarts})" if restart else ""
            self._event(pool, f"replica {r.id} starting{self._where(r)}{again}")
        self._notify(pool.spec.revision)
        watcher = self._background(self._watch_end(pool, r, run))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch_end(self, pool: Pool, r: Replica, run: ReplicaRun) -> None:
        ended = await run.wait()
        if r.run is not run:
            return
        r.run = None
        if r.state in _LIVE:  # not asked to stop: a crash, someone else's kill, a lost node
            self._fail(pool, r, ended)

    def _fail(self, pool: Pool, r: Replica, reason: str, state: ReplicaState = ReplicaState.FAILED) -> None:
        """Take `r` out of service with `reason`; stop it if it still runs; restart it after the backoff."""
        delay = backoff_delay(r.attempt, self.backoff_initial_s, self.backoff_max_s)
        r.attempt += 1
        r.state, r.reason, r.restart_at = state, reason, time.monotonic() + delay
        r.http_url = r.grpc_target = None
        self._event(pool, f"replica {r.id} {reason}; restarting in {delay:g}s")
        self._notify(pool.spec.revision)
        if r.run is not None:  # its end watcher clears `run`: the restart waits for the old run's end
            self._background(r.run.stop(KILL_GRACE_S))

    # -- health ------------------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            now = time.monotonic()
            checks = [self._check(pool, r, now) for pool in list(self._pools.values()) for r in pool.replicas]
            for result in await asyncio.gather(*checks, return_exceptions=True):
                if isinstance(result, Exception):
                    log.error("replica check failed", exc_info=result)
            try:
                await self._after_checks()
            except Exception:
                log.exception("%s: checks round failed", self.label)
            await asyncio.sleep(self.health_interval_s)

    async def _check(self, pool: Pool, r: Replica, now: float) -> None:
        if r.state in _WAITING:
            if r.run is None and now >= r.restart_at:
                await self._spawn(pool, r)
            return
        run, state = r.run, r.state
        if run is None or state not in _LIVE:
            return
        if not run.placed():
            reason = await self._pending(pool, r)
            if r.run is run and r.state is state:
                r.reason, r.started_at = reason, now  # the start timeout counts from placement
            return
        if state is ReplicaState.PENDING:
            r.state, r.reason, r.node = ReplicaState.STARTING, "starting", run.node
            self._event(pool, f"replica {r.id} placed{' on ' + run.node if run.node else ''}")
            self._notify(pool.spec.revision)
            return
        if r.http_url is None and (where := await run.endpoints()) is not None and r.run is run:
            r.http_url, r.grpc_target, r.node = where.http_url, where.grpc_target, run.node
            self._notify(pool.spec.revision)
        answered, error = await self._probe(r.http_url) if r.http_url else (False, "not listening yet")
        if r.run is not run or r.state is not state:  # ended or drained meanwhile
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
            if r.run is not run or r.state is not state:
                return
            r.model_problems = f"{problems} (on node {r.node})" if problems and self.multi_node else problems
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

    def _event(self, pool: Pool, message: str) -> None:
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
