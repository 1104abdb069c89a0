"""Embedded state for `servegate up`: applied manifests, revisions, rollout pointers and events, in
one SQLite file under the state dir (WAL, one transaction per change, a schema version table).

Everything the controller needs to restore every InferenceService after a restart is here; what
can be recomputed (replica endpoints, readiness) is not.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Event", "ResourceRow", "RevisionRow", "Rollout", "Store"]

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, name TEXT NOT NULL, manifest TEXT NOT NULL,
    generation INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS revisions (
    name TEXT PRIMARY KEY, service TEXT NOT NULL, component TEXT NOT NULL,
    number INTEGER NOT NULL, key TEXT NOT NULL, spec TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS revisions_by_service ON revisions (service, component, number);
CREATE TABLE IF NOT EXISTS rollouts (
    service TEXT NOT NULL, component TEXT NOT NULL,
    latest TEXT, previous TEXT, pinned INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (service, component));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, name TEXT NOT NULL,
    time REAL NOT NULL, type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL,
    actor TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS events_by_object ON events (kind, name, id);
"""

_SELECT_RESOURCES = "SELECT kind, name, manifest, generation, created, updated FROM resources"


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


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
            if row is not None and row[0] > SCHEMA_VERSION:
                raise RuntimeError(
                    f"state database schema {row[0]} is newer than this servegate knows ({SCHEMA_VERSION})"
                )
            self._db.executescript(_SCHEMA)
            if row is None:
                self._db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] < 2:  # 2: events name who caused them (the caller's token)
                self._db.execute("ALTER TABLE events ADD COLUMN actor TEXT NOT NULL DEFAULT ''")
                self._db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def close(self) -> None:
        self._db.close()

    # -- resources --------------------------------------------------------------------------------

    def put_resource(self, kind: str, name: str, manifest: dict[str, Any]) -> str:
        """Store a manifest; returns "created", "configured" or "unchanged" (kubectl's words)."""
        text = json.dumps(manifest, sort_keys=True)
        now = time.time()
        with self._db:
            row = self._db.execute(
                "SELECT manifest, generation FROM resources WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO resources VALUES (?, ?, ?, 1, ?, ?)", (kind, name, text, now, now)
                )
                return "created"
            if row[0] == text:
                return "unchanged"
            self._db.execute(
                "UPDATE resources SET manifest = ?, generation = ?, updated = ? WHERE kind = ? AND name = ?",
                (text, row[1] + 1, now, kind, name),
            )
            return "configured"

    def resources(self, kind: str | None = None) -> list[ResourceRow]:
        rows = (
            self._db.execute(_SELECT_RESOURCES + " WHERE kind = ? ORDER BY name", (kind,))
            if kind
            else self._db.execute(_SELECT_RESOURCES + " ORDER BY created")
        )
        return [ResourceRow(k, n, json.loads(m), g, c, u) for k, n, m, g, c, u in rows]

    def resource(self, kind: str, name: str) -> ResourceRow | None:
        row = self._db.execute(_SELECT_RESOURCES + " WHERE kind = ? AND name = ?", (kind, name)).fetchone()
        if row is None:
            return None
        k, n, m, g, c, u = row
        return ResourceRow(k, n, json.loads(m), g, c, u)

    def delete_resource(self, kind: str, name: str) -> bool:
        with self._db:
            deleted = self._db.execute(
                "DELETE FROM resources WHERE kind = ? AND name = ?", (kind, name)
            ).rowcount
            if kind == "InferenceService":
                self._db.execute("DELETE FROM revisions WHERE service = ?", (name,))
                self._db.execute("DELETE FROM rollouts WHERE service = ?", (name,))
            self._db.execute("DELETE FROM events WHERE kind = ? AND name = ?", (kind, name))
        return bool(deleted)

    # -- revisions and rollouts ---------------------------------------------------------------------

    def revisions(self, service: str, component: str) -> list[RevisionRow]:
        rows = self._db.execute(
            "SELECT name, service, component, number, key, spec, created FROM revisions "
            "WHERE service = ? AND component = ? ORDER BY number",
            (service, component),
        )
        return [RevisionRow(n, s, c, num, k, json.loads(spec), t) for n, s, c, num, k, spec, t in rows]

    def add_revision(self, service: str, component: str, key: str, spec: dict[str, Any]) -> RevisionRow:
        now = time.time()
        with self._db:
            (last,) = self._db.execute(
                "SELECT COALESCE(MAX(number), 0) FROM revisions WHERE service = ? AND component = ?",
                (service, component),
            ).fetchone()
            number = last + 1
            name = f"{service}-{component}-{number:05d}"
            self._db.execute(
                "INSERT INTO revisions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, service, component, number, key, json.dumps(spec, sort_keys=True), now),
            )
            self._db.execute(
                "UPDATE rollouts SET pinned = 0 WHERE service = ? AND component = ?", (service, component)
            )
        return RevisionRow(name, service, component, number, key, spec, now)

    def rollout(self, service: str, component: str) -> Rollout:
        row = self._db.execute(
            "SELECT latest, previous, pinned FROM rollouts WHERE service = ? AND component = ?",
            (service, component),
        ).fetchone()
        return Rollout(row[0], row[1], bool(row[2])) if row else Rollout()

    def set_rollout(self, service: str, component: str, rollout: Rollout) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO rollouts VALUES (?, ?, ?, ?, ?) ON CONFLICT (service, component) "
                "DO UPDATE SET latest = excluded.latest, previous = excluded.previous, "
                "pinned = excluded.pinned",
                (service, component, rollout.latest, rollout.previous, int(rollout.pinned)),
            )

    # -- events -----------------------------------------------------------------------------------

    def add_event(self, kind: str, name: str, type_: str, reason: str, message: str, actor: str = "") -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO events (kind, name, time, type, reason, message, actor) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (kind, name, time.time(), type_, reason, message, actor),
            )

    def events(self, kind: str, name: str, limit: int = 50) -> list[Event]:
        rows = self._db.execute(
            "SELECT time, type, reason, message, actor FROM events "
            "WHERE kind = ? AND name = ? ORDER BY id DESC LIMIT ?",
            (kind, name, limit),
        ).fetchall()
        return [Event(*row) for row in reversed(rows)]
