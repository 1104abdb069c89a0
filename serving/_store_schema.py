"""The state store's tables and migrations (`serving/store.py` reads and writes them).

Migration 1 is the schema the sqlite3-era store wrote (its own `schema_version` table, at 1 or 2):
a `state.db` it left is adopted in place, data kept. Migration 2 adds the change counter that
followers poll (`Store.version()`). Migration 3 adds the secrets gateways sharing one state share.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from serving import sqldb

__all__ = ["MIGRATIONS", "counter", "events", "resources", "revisions", "rollouts", "secrets"]

_meta = sa.MetaData()

# Column types match what the sqlite3-era store declared (TEXT, INTEGER, REAL), so that an adopted
# file and a new one read alike.
resources = sa.Table(
    "resources",
    _meta,
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
)
revisions = sa.Table(
    "revisions",
    _meta,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("service", sa.Text, nullable=False),
    sa.Column("component", sa.Text, nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Index("revisions_by_service", "service", "component", "number"),
)
rollouts = sa.Table(
    "rollouts",
    _meta,
    sa.Column("service", sa.Text, primary_key=True),
    sa.Column("component", sa.Text, primary_key=True),
    sa.Column("latest", sa.Text),
    sa.Column("previous", sa.Text),
    sa.Column("pinned", sa.Boolean, nullable=False, server_default=sa.false()),
)
events = sa.Table(
    "events",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False, server_default=""),
    sa.Index("events_by_object", "kind", "name", "id"),
    # ids never come back after a delete: "newest first" stays true (SQLite's AUTOINCREMENT).
    sqlite_autoincrement=True,
)
#: one row (id 1): bumped by every change to resources, revisions or rollouts. Writers lock it
#: first, which also makes their read-then-write steps safe between processes.
counter = sa.Table(
    "state_counter",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.BigInteger, nullable=False),
)

#: secrets every gateway sharing the state uses alike (the key its internal tokens derive from).
secrets = sa.Table(
    "gateway_secrets",
    _meta,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

#: the sqlite3-era store's version table, and what it is set to once adopted: that store refuses a
#: version newer than its own 2, so an older servegate cannot write past the migrations here.
_LEGACY_TABLE = "schema_version"
_LEGACY_ADOPTED = 3


def _v1_state_tables(conn: Connection) -> None:
    # Only SQLite can hold a sqlite3-era file; a shared PostgreSQL may have another tool's table
    # of that name.
    if conn.dialect.name == "sqlite" and sa.inspect(conn).has_table(_LEGACY_TABLE):
        _adopt_legacy(conn)
    # (A later migration that changes these tables must leave this step creating today's shape.)
    _meta.create_all(conn, tables=[resources, revisions, rollouts, events])


def _adopt_legacy(conn: Connection) -> None:
    legacy = conn.exec_driver_sql(f"SELECT max(version) FROM {_LEGACY_TABLE}").scalar()
    if legacy is not None and legacy > 2:
        raise sqldb.DatabaseError(
            f"the state database has a schema_version of {legacy}, which no servegate wrote"
        )
    inspector = sa.inspect(conn)
    if inspector.has_table("events") and "actor" not in {c["name"] for c in inspector.get_columns("events")}:
        # version 1 -> 2: events name who caused them (the caller's token)
        conn.exec_driver_sql("ALTER TABLE events ADD COLUMN actor TEXT NOT NULL DEFAULT ''")
    conn.exec_driver_sql(f"DELETE FROM {_LEGACY_TABLE}")
    conn.exec_driver_sql(f"INSERT INTO {_LEGACY_TABLE} (version) VALUES ({_LEGACY_ADOPTED})")


def _v2_change_counter(conn: Connection) -> None:
    _meta.create_all(conn, tables=[counter])
    conn.execute(counter.insert().values(id=1, version=0))


def _v3_shared_secrets(conn: Connection) -> None:
    _meta.create_all(conn, tables=[secrets])


MIGRATIONS = sqldb.Migrations("state", [_v1_state_tables, _v2_change_counter, _v3_shared_secrets])
