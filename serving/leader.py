"""Leader election through a lease row in the database that several `servegate up` processes share:
every gateway routes, the one holding the lease reconciles and scales, and another takes it over
when the holder stops renewing.

A lease is a row (name, holder, acquired, expires). `try_acquire` takes it when it is free, expired
or already the caller's (then it renews it) in one conditional UPDATE, and INSERTs the row when
there is none: two contenders never both win, on SQLite (writers serialize at BEGIN IMMEDIATE) and on
PostgreSQL (the UPDATE re-checks its condition on the row the other committed; the second INSERT of
one name fails on the primary key).

Times are the holders' own wall clocks, passed in (the database's clock is not used, and tests step a
fake one). So the holders' clocks must roughly agree: a successor takes an expired lease by its own
clock. With a TTL of ~10 s, renewals every TTL/3 and a leader that steps down when it has less than
one renewal interval left, clocks may disagree by about 3 s before two leaders could overlap;
NTP keeps machines within milliseconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from serving import sqldb

__all__ = [
    "LeaderElector",
    "LeaseState",
    "announce",
    "connect",
    "default_holder",
    "leave",
    "release",
    "try_acquire",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_meta = sa.MetaData()
_leases = sa.Table(
    "leases",
    _meta,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    #: when this holder took the lease (renewals keep it), and until when it holds it (its clock).
    sa.Column("acquired", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
)


#: who campaigns for a lease, leader or not, and where others reach it (a gateway's base URL, which
#: the leader's autoscaler scrapes); a member not seen for a TTL is gone.
_members = sa.Table(
    "lease_members",
    _meta,
    sa.Column("lease", sa.Text, primary_key=True),
    sa.Column("member", sa.Text, primary_key=True),
    sa.Column("address", sa.Text, nullable=False),
    sa.Column("seen", sa.Float, nullable=False),
)


def _create_schema(conn: Connection) -> None:
    _meta.create_all(conn, tables=[_leases])


def _add_members(conn: Connection) -> None:
    _meta.create_all(conn, tables=[_members])


_MIGRATIONS = sqldb.Migrations("leases", [_create_schema, _add_members])


def connect(url: str) -> Engine:
    """An engine on the database at `url` (the state store's), with the lease table in it."""
    return sqldb.connect(url, _MIGRATIONS)


def default_holder() -> str:
    """This process's identity: host name, pid and a random suffix (a restarted pid is not the same
    holder)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A lease as `try_acquire` left it."""

    #: whether the caller holds it now.
    held: bool
    #: who holds it (None: nobody, it was released meanwhile).
    holder: str | None
    #: when that holder took it, and until when it holds it (seconds, the holder's clock).
    acquired: float = 0.0
    expires: float = 0.0


def try_acquire(engine: Engine, name: str, holder: str, ttl_s: float, now: float) -> LeaseState:
    """Take the lease `name` for `ttl_s` seconds from `now` if it is free, expired (`expires <= now`)
    or `holder`'s already (a renewal); otherwise leave it. Atomic between processes."""
    lease = _leases.c
    with sqldb.writing(engine) as conn:
        taken = conn.execute(
            _leases.update()
            .where(lease.name == name, sa.or_(lease.holder == holder, lease.expires <= now))
            .values(
                holder=holder,
                expires=now + ttl_s,
                acquired=sa.case((lease.holder == holder, lease.acquired), else_=now),
            )
        ).rowcount
        if not taken:
            try:
                with conn.begin_nested():  # PostgreSQL: a failed INSERT would spoil the transaction
                    conn.execute(
                        _leases.insert().values(name=name, holder=holder, acquired=now, expires=now + ttl_s)
                    )
            except sa.exc.IntegrityError:
                pass  # someone else holds it, or took it first
        row = conn.execute(
            sa.select(lease.holder, lease.acquired, lease.expires).where(lease.name == name)
        ).first()
    if row is None:
        return LeaseState(held=False, holder=None)
    return LeaseState(row.holder == holder, row.holder, row.acquired, row.expires)


def announce(engine: Engine, name: str, member: str, address: str, now: float, max_age_s: float) -> list[str]:
    """Say that `member` campaigns for lease `name` and is reached at `address`; returns the
    addresses of every member seen in the last `max_age_s` seconds (this one included)."""
    m = _members.c
    with sqldb.writing(engine) as conn:
        seen = conn.execute(
            _members.update().where(m.lease == name, m.member == member).values(address=address, seen=now)
        ).rowcount
        if not seen:
            conn.execute(_members.insert().values(lease=name, member=member, address=address, seen=now))
        # Members gone for long are forgotten (a crashed gateway says nothing).
        conn.execute(_members.delete().where(m.lease == name, m.seen < now - 10 * max_age_s))
        rows = conn.execute(
            sa.select(m.address).where(m.lease == name, m.seen >= now - max_age_s).order_by(m.member)
        )
        return [row.address for row in rows]


def leave(engine: Engine, name: str, member: str) -> None:
    with sqldb.writing(engine) as conn:
        conn.execute(_members.delete().where(_members.c.lease == name, _members.c.member == member))


def release(engine: Engine, name: str, holder: str) -> bool:
    """Give the lease up if `holder` holds it (the next contender takes it at once); whether it did."""
    with sqldb.writing(engine) as conn:
        return bool(
            conn.execute(_leases.delete().where(_leases.c.name == name, _leases.c.holder == holder)).rowcount
        )


class LeaderElector:
    """Campaigns for the lease `name` in `engine`'s database (from `connect`; the caller disposes
    of it): `run()` tries to acquire or renew it every `ttl_s / 3` seconds until `close()`.

    `on_started_leading` and `on_stopped_leading` are awaited when leadership changes; keep them
    short (start work, do not do it: the next renewal waits for them); an exception in one is
    logged and changes nothing. Leadership ends when another holder has the lease, or when renewing
    failed (database errors are logged and retried) and less than one renewal interval is left.
    `clock` (wall-clock seconds, shared with the other holders) and `sleep` are for tests.
    """

    def __init__(
        self,
        engine: Engine,
        name: str = "gateway",
        *,
        holder: str | None = None,
        ttl_s: float = 10.0,
        on_started_leading: Callable[[], Awaitable[None]] | None = None,
        on_stopped_leading: Callable[[], Awaitable[None]] | None = None,
        address: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"the lease's ttl_s must be positive, not {ttl_s}")
        self.engine = engine
        self.name = name
        self.holder = holder or default_holder()
        self.ttl_s = ttl_s
        #: seconds between two attempts; also the margin a leader keeps before its lease expires.
        self.renew_s = ttl_s / 3
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        #: where the others reach this member (announced with every attempt), and where they are.
        self.address = address
        self.members: list[str] = [address] if address else []
        self._clock = clock
        self._sleep = sleep
        self._leading = False
        self._expires = 0.0  # of the lease this elector last wrote
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._call: asyncio.Future[Any] | None = None  # a database call, possibly still running
        # Its own thread: renewals never queue behind the gateway's other work in the default pool.
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"lease-{name}")

    @property
    def is_leader(self) -> bool:
        """Whether this process leads: false as soon as its lease has less than one renewal interval
        left, even before the loop notices (a stalled event loop)."""
        return self._leading and self._clock() + self.renew_s < self._expires

    async def run(self) -> None:
        """Acquire or renew every `renew_s` seconds; returns once `close()` is called. Cancelled, it
        steps down too, but leaves the lease to expire."""
        self._task = task = asyncio.current_task()
        try:
            while not self._closed:
                await self.step()
                await self._sleep(self.renew_s)
        except asyncio.CancelledError:
            if not self._closed:
                raise
            if task is not None:
                task.uncancel()  # close() stopped it: run() returns
        finally:
            if self._leading:
                await self._step_down("the elector stopped", logging.INFO)

    async def step(self) -> bool:
        """One attempt to acquire or renew the lease, with the callbacks; whether this process leads."""
        now = self._clock()
        if self.address is not None:
            try:
                args = (self.engine, self.name, self.holder, self.address, now, self.ttl_s)
                self.members = await self._database(announce, *args)
            except Exception as exc:  # the lease attempt below says it too, and what it means
                log.debug("lease %r: cannot announce this member: %s", self.name, exc)
        try:
            state = await self._database(try_acquire, self.engine, self.name, self.holder, self.ttl_s, now)
        except Exception as exc:  # unreachable, timed out, refused: the next attempt may do better
            log.warning("lease %r: cannot reach the database: %s", self.name, exc)
            if self._leading and not self.is_leader:
                await self._step_down("its lease could not be renewed before it expires")
            return self.is_leader
        if state.held and self._clock() + self.renew_s < state.expires:
            self._expires = state.expires
            if not self._leading:
                self._leading = True
                log.info("lease %r: %s leads", self.name, self.holder)
                await self._callback(self._on_started)
        elif self._leading:
            await self._step_down(
                f"the lease is held by {state.holder}" if not state.held else "renewed too late"
            )
        return self.is_leader

    async def close(self) -> None:
        """Stop campaigning; step down and release the lease, so that a successor takes over at its
        next attempt instead of after the TTL."""
        self._closed = True
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            await asyncio.wait({task})
        if self._leading:
            await self._step_down("closing", logging.INFO)
        if self._call is not None and not self._call.done():
            # A renewal still on its way would hold the lease again after the release.
            await asyncio.wait({self._call}, timeout=self.renew_s)
        try:
            await self._database(release, self.engine, self.name, self.holder)
            if self.address is not None:
                await self._database(leave, self.engine, self.name, self.holder)
        except Exception as exc:
            log.warning("lease %r: cannot release it (it expires in %.0f s): %s", self.name, self.ttl_s, exc)
        self._thread.shutdown(wait=False)

    async def _step_down(self, why: str, level: int = logging.WARNING) -> None:
        self._leading = False
        self._expires = 0.0
        log.log(level, "lease %r: %s stops leading: %s", self.name, self.holder, why)
        await self._callback(self._on_stopped)

    async def _callback(self, callback: Callable[[], Awaitable[None]] | None) -> None:
        if callback is None:
            return
        try:
            await callback()
        except Exception:
            log.exception("lease %r: a leadership callback failed", self.name)

    async def _database(self, function: Callable[..., _T], *args: Any) -> _T:
        """`function(*args)` in a thread, waited for at most `renew_s` seconds: a database that hangs
        must not keep a leader from stepping down. One call at a time (a hung one is not repeated)."""
        if self._call is not None and not self._call.done():
            raise TimeoutError("the previous database call has not returned")
        call = asyncio.get_running_loop().run_in_executor(self._thread, function, *args)
        # A call given up on may still fail: its error was logged as the timeout already.
        call.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._call = call
        done, _ = await asyncio.wait({call}, timeout=self.renew_s)
        if not done:
            raise TimeoutError(f"no answer in {self.renew_s:.1f} s")
        return call.result()
