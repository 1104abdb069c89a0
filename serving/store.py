"""Embedded state for `servegate up`: applied manifests, revisions, rollout pointers and events, in
any SQLAlchemy database: a SQLite file under the state dir by default, or a PostgreSQL that several
gateways share (high availability). One transaction per change; the schema is in `_store_schema`.

Everything the controller needs to restore every InferenceService after a restart is here; what
can be recomputed (replica endpoints, readiness) is not.

Every change to resources, revisions or rollouts bumps one counter in the same transaction:
`version()` reads it (one row), so a gateway that does not write can poll it cheaply and reload only
when another gateway changed something. Writers lock that counter's row first (SQLite: the write
lock taken at BEGIN), so a read-then-write such as the next revision number or generation is safe
between processes sharing one PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from serving import sqldb
from serving._store_schema import MIGRATIONS, counter, events, resources, revisions, rollouts, secrets

__all__ = ["Event", "ResourceRow", "RevisionRow", "Rollout", "Store", "default_url"]


def default_url(state_dir: Path) -> str:
    """The state dir's SQLite file, `state.db`, as a SQLAlchemy URL."""
    return f"sqlite:///{(Path(state_dir).expanduser().resolve() / 'state.db')}"


@dataclass(frozen=True, slots=True)
class ResourceRow:
    kind: str
    name: str
    manifest: dict[str, Any]
    generation: int
    created: float
    updated: float


@dataclass(frozen=True, slots=True)
class RevisionRow:
    name: str
    service: str
    component: str
    number: int
    key: str
    spec: dict[str, Any]
    created: float


@dataclass(frozen=True, slots=True)
class Rollout:
    """A component's rollout pointers, as KServe's status names them."""

    latest: str | None = None  # latestRolledoutRevision
    previous: str | None = None  # previousRolledoutRevision
    #: set by a rollback: traffic stays on `latest` and newer revisions get none until the next change.
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    time: float
    type: str  # Normal | Warning
    reason: str
    message: str
    #: who caused it: the caller's token name ("" for what the controller did on its own).
    actor: str = ""


_RESOURCE_COLUMNS = (
    resources.c.kind,
    resources.c.name,
    resources.c.manifest,
    resources.c.generation,
    resources.c.created,
    resources.c.updated,
)
_REVISION_COLUMNS = (
    revisions.c.name,
    revisions.c.service,
    revisions.c.component,
    revisions.c.number,
    revisions.c.key,
    revisions.c.spec,
    revisions.c.created,
)


def _resource(row: sa.Row[Any]) -> ResourceRow:
    kind, name, manifest, generation, created, updated = row
    return ResourceRow(kind, name, json.loads(manifest), generation, created, updated)


def _rollout_of(service: str, component: str) -> sa.ColumnElement[bool]:
    return sa.and_(rollouts.c.service == service, rollouts.c.component == component)


class Store:
    """The state in the database at `location`: a SQLAlchemy URL, or a `Path` to a SQLite file.
    Raises `sqldb.DatabaseError` when the URL is bad, the database unreachable or newer than this
    code. Safe to share between threads."""

    def __init__(self, location: str | Path) -> None:
        url = f"sqlite:///{Path(location).expanduser().resolve()}" if isinstance(location, Path) else location
        self._engine = sqldb.connect(url, MIGRATIONS)
        #: versions this Store's own writes made, not yet passed by `changed_elsewhere`.
        self._own: set[int] = set()
        self._own_lock = threading.Lock()

    def close(self) -> None:
        self._engine.dispose()

    def version(self) -> int:
        """A counter that every change to resources, revisions or rollouts (any process's) bumps."""
        with sqldb.reading(self._engine) as conn:
            return conn.execute(sa.select(counter.c.version).where(counter.c.id == 1)).scalar_one()

    @contextlib.contextmanager
    def _changing(self) -> Iterator[Connection]:
        """A write transaction holding the counter's row lock (PostgreSQL; SQLite's BEGIN IMMEDIATE
        serializes writers already): what it reads stays true until it commits."""
        version = sa.select(counter.c.version).where(counter.c.id == 1)
        with sqldb.writing(self._engine) as conn:
            before = conn.execute(version.with_for_update()).scalar_one()
            yield conn
            after = conn.execute(version).scalar_one()
        if after != before:  # committed: a version this process made
            with self._own_lock:
                self._own.add(after)

    def changed_elsewhere(self, since: int) -> tuple[int, bool]:
        """The version now, and whether any change after version `since` was another process's (a
        gateway sharing the state): this Store's own writes do not count. For one caller, which
        passes the version it got last."""
        now = self.version()
        with self._own_lock:
            theirs = any(v not in self._own for v in range(since + 1, now + 1))
            self._own = {v for v in self._own if v > now}
        return now, theirs

    @staticmethod
    def _bump(conn: Connection) -> None:
        conn.execute(counter.update().where(counter.c.id == 1).values(version=counter.c.version + 1))

    def secret(self, name: str, make: Callable[[], str]) -> str:
        """The secret `name` every gateway on this state shares: made with `make()` by the first
        that asks (a race between two keeps the first written), read by the others."""
        with sqldb.reading(self._engine) as conn:
            found = conn.execute(sa.select(secrets.c.value).where(secrets.c.name == name)).scalar()
        if found is not None:
            return str(found)
        with self._changing() as conn:
            found = conn.execute(sa.select(secrets.c.value).where(secrets.c.name == name)).scalar()
            if found is None:
                found = make()
                conn.execute(secrets.insert().values(name=name, value=found))
        return str(found)

    # -- resources --------------------------------------------------------------------------------

    def put_resource(self, kind: str, name: str, manifest: dict[str, Any]) -> str:
        """Store a manifest; returns "created", "configured" or "unchanged" (kubectl's words)."""
        text = json.dumps(manifest, sort_keys=True)
        now = time.time()
        key = sa.and_(resources.c.kind == kind, resources.c.name == name)
        with self._changing() as conn:
            row = conn.execute(sa.select(resources.c.manifest, resources.c.generation).where(key)).first()
            if row is not None and row.manifest == text:
                return "unchanged"
            if row is None:
                conn.execute(
                    resources.insert().values(
                        kind=kind, name=name, manifest=text, generation=1, created=now, updated=now
                    )
                )
            else:
                conn.execute(
                    resources.update()
                    .where(key)
                    .values(manifest=text, generation=row.generation + 1, updated=now)
                )
            self._bump(conn)
        return "created" if row is None else "configured"

    def resources(self, kind: str | None = None) -> list[ResourceRow]:
        query = sa.select(*_RESOURCE_COLUMNS)
        if kind:
            query = query.where(resources.c.kind == kind).order_by(resources.c.name)
        else:
            query = query.order_by(resources.c.created, resources.c.kind, resources.c.name)
        with sqldb.reading(self._engine) as conn:
            return [_resource(row) for row in conn.execute(query)]

    def resource(self, kind: str, name: str) -> ResourceRow | None:
        query = sa.select(*_RESOURCE_COLUMNS).where(resources.c.kind == kind, resources.c.name == name)
        with sqldb.reading(self._engine) as conn:
            row = conn.execute(query).first()
        return None if row is None else _resource(row)

    def delete_resource(self, kind: str, name: str) -> bool:
        with self._changing() as conn:
            deleted = conn.execute(
                resources.delete().where(resources.c.kind == kind, resources.c.name == name)
            ).rowcount
            changed = deleted
            if kind == "InferenceService":
                changed += conn.execute(revisions.delete().where(revisions.c.service == name)).rowcount
                changed += conn.execute(rollouts.delete().where(rollouts.c.service == name)).rowcount
            conn.execute(events.delete().where(events.c.kind == kind, events.c.name == name))
            if changed:
                self._bump(conn)
        return bool(deleted)

    # -- revisions and rollouts ---------------------------------------------------------------------

    def revisions(self, service: str, component: str) -> list[RevisionRow]:
        query = (
            sa.select(*_REVISION_COLUMNS)
            .where(revisions.c.service == service, revisions.c.component == component)
            .order_by(revisions.c.number)
        )
        with sqldb.reading(self._engine) as conn:
            rows = conn.execute(query).all()
        return [RevisionRow(n, s, c, num, k, json.loads(spec), t) for n, s, c, num, k, spec, t in rows]

    def add_revision(self, service: str, component: str, key: str, spec: dict[str, Any]) -> RevisionRow:
        now = time.time()
        text = json.dumps(spec, sort_keys=True)
        with self._changing() as conn:
            last = conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(revisions.c.number), 0)).where(
                    revisions.c.service == service, revisions.c.component == component
                )
            ).scalar_one()
            number = last + 1
            name = f"{service}-{component}-{number:05d}"
            conn.execute(
                revisions.insert().values(
                    name=name,
                    service=service,
                    component=component,
                    number=number,
                    key=key,
                    spec=text,
                    created=now,
                )
            )
            conn.execute(rollouts.update().where(_rollout_of(service, component)).values(pinned=False))
            self._bump(conn)
        return RevisionRow(name, service, component, number, key, spec, now)

    def rollout(self, service: str, component: str) -> Rollout:
        query = sa.select(rollouts.c.latest, rollouts.c.previous, rollouts.c.pinned).where(
            _rollout_of(service, component)
        )
        with sqldb.reading(self._engine) as conn:
            row = conn.execute(query).first()
        return Rollout(row.latest, row.previous, bool(row.pinned)) if row else Rollout()

    def set_rollout(self, service: str, component: str, rollout: Rollout) -> None:
        values = {"latest": rollout.latest, "previous": rollout.previous, "pinned": rollout.pinned}
        with self._changing() as conn:
            # The counter's lock keeps the row from appearing between the two (an upsert without
            # a dialect's ON CONFLICT).
            if not conn.execute(
                rollouts.update().where(_rollout_of(service, component)).values(values)
            ).rowcount:
                conn.execute(rollouts.insert().values(service=service, component=component, **values))
            self._bump(conn)

    # -- events -----------------------------------------------------------------------------------

    def add_event(self, kind: str, name: str, type_: str, reason: str, message: str, actor: str = "") -> None:
        row = {"kind": kind, "name": name, "time": time.time(), "type": type_, "reason": reason}
        with sqldb.writing(self._engine) as conn:
            conn.execute(events.insert().values(**row, message=message, actor=actor))

    def events(self, kind: str, name: str, limit: int = 50) -> list[Event]:
        query = (
            sa.select(events.c.time, events.c.type, events.c.reason, events.c.message, events.c.actor)
            .where(events.c.kind == kind, events.c.name == name)
            .order_by(events.c.id.desc())
            .limit(limit)
        )
        with sqldb.reading(self._engine) as conn:
            rows = conn.execute(query).all()
        return [Event(*row) for row in reversed(rows)]
