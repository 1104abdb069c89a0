"""The registry's tables (SQLAlchemy Core), the engine for any database URL, and schema migrations.

SQLite gets WAL, a busy timeout and `BEGIN IMMEDIATE` transactions: a writer takes the write lock
when it starts, so two processes registering at once queue instead of failing half-way with
"database is locked". PostgreSQL's row locks do the same for the version counter.

Migrations are numbered functions applied in order, each in the transaction that records it in
`schema_version`; a database newer than this code is refused rather than misread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from serving.registry.types import RegistryError

__all__ = [
    "SCHEMA_VERSION",
    "WRITE",
    "aliases",
    "audit",
    "connect",
    "gates",
    "metadata",
    "models",
    "versions",
]

metadata = sa.MetaData()

models = sa.Table(
    "registry_models",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
    #: the version counter: raised in the transaction that inserts the version, so gap-free.
    sa.Column("last_version", sa.Integer, nullable=False),
)

versions = sa.Table(
    "registry_versions",
    metadata,
    sa.Column("model", sa.String(128), sa.ForeignKey("registry_models.name"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("format", sa.String(32), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("artifact_name", sa.Text, nullable=False),
    sa.Column("artifact_kind", sa.String(8), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("entry", sa.Text),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("signature", sa.JSON),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("source", sa.JSON, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
)

aliases = sa.Table(
    "registry_aliases",
    metadata,
    sa.Column("model", sa.String(128), sa.ForeignKey("registry_models.name"), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
)

gates = sa.Table(
    "registry_gates",
    metadata,
    sa.Column("model", sa.String(128), sa.ForeignKey("registry_models.name"), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("metric", sa.String(128), primary_key=True),
    sa.Column("op", sa.String(2), nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
)

audit = sa.Table(
    "registry_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False, index=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
)

#: execution option marking a connection that will write (SQLite takes its write lock at BEGIN).
WRITE = "servegate_write"

_schema_version = sa.Table("registry_schema_version", sa.MetaData(), sa.Column("version", sa.Integer))


def _v1(conn: Connection) -> None:
    """Models, versions, aliases and the audit log."""
    for table in (models, versions, aliases, audit):
        table.create(conn)


def _v2(conn: Connection) -> None:
    """Promotion gates."""
    gates.create(conn)


#: migration N+1 is _MIGRATIONS[N]; append, never edit one that has shipped.
_MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2]
SCHEMA_VERSION = len(_MIGRATIONS)

#: any fixed number: PostgreSQL sessions migrating at once take turns on this advisory lock.
_MIGRATION_LOCK = 0x5E6A7E


def connect(url: str) -> Engine:
    """An engine for `url`, with the schema migrated to SCHEMA_VERSION."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise RegistryError(f"bad registry database URL '{url}': {exc}") from None
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = _sqlite_engine(parsed)
        else:
            engine = sa.create_engine(parsed, pool_pre_ping=True, future=True)
    except (NoSuchModuleError, ImportError) as exc:
        hint = " (pip install 'servegate[postgres]')" if parsed.get_backend_name() == "postgresql" else ""
        raise RegistryError(f"no database driver for '{parsed.drivername}'{hint}: {exc}") from None
    try:
        migrate(engine)
    except sa.exc.OperationalError as exc:
        engine.dispose()
        raise RegistryError(f"cannot open the registry database {parsed!r}: {exc.orig}") from None
    return engine


def _sqlite_engine(url: sa.URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, future=True)

    # pysqlite's own transaction handling begins lazily and deferred; take over (SQLAlchemy's recipe).
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # A writer locks at BEGIN; a reader's snapshot needs no lock (WAL).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

    return engine


def migrate(engine: Engine) -> int:
    """Apply the migrations this database lacks; returns the version it is at now."""
    with engine.connect() as conn, conn.execution_options(**{WRITE: True}).begin():
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        _schema_version.create(conn, checkfirst=True)
        current = conn.execute(sa.select(sa.func.max(_schema_version.c.version))).scalar() or 0
        if current > SCHEMA_VERSION:
            raise RegistryError(
                f"the registry database is at schema version {current}, newer than this servegate "
                f"knows ({SCHEMA_VERSION}): upgrade servegate"
            )
        for number in range(current + 1, SCHEMA_VERSION + 1):
            _MIGRATIONS[number - 1](conn)
            conn.execute(_schema_version.insert().values(version=number))
    return SCHEMA_VERSION
