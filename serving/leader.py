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
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from serving import sqldb
from serving.election import Elector, default_holder

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


class LeaderElector(Elector):
    """Campaigns for the lease `name` in `engine`'s database (from `connect`; the caller disposes
    of it): `run()` tries to acquire or renew it every `ttl_s / 3` seconds until `close()` (see
    `Elector`). With an `address`, every attempt also announces where this member is reached, and
    `members` lists the addresses of every member seen within a TTL (this one included).
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
        super().__init__(
            f"lease {name!r}",
            holder=holder,
            ttl_s=ttl_s,
            retry_s=None,
            on_started_leading=on_started_leading,
            on_stopped_leading=on_stopped_leading,
            clock=clock,
            sleep=sleep,
        )
        self.engine = engine
        self.name = name
        self.address = address
        self.members: list[str] = [address] if address else []

    def _attempt(self, now: float) -> tuple[str | None, float]:
        if self.address is not None:
            self.members = announce(self.engine, self.name, self.holder, self.address, now, self.ttl_s)
        state = try_acquire(self.engine, self.name, self.holder, self.ttl_s, now)
        return state.holder, state.expires

    def _release(self, now: float) -> None:
        release(self.engine, self.name, self.holder)
        if self.address is not None:
            leave(self.engine, self.name, self.holder)
