"""SQLAlchemy engines and schema migrations shared by the stores that may live in any database (the
model registry, the pipeline metadata store): SQLite by default, PostgreSQL for a shared one.

SQLite gets WAL, a busy timeout and `BEGIN IMMEDIATE` for writers (connections marked with the
`WRITE` execution option): a writer takes the write lock when it starts, so two processes writing
at once queue instead of failing half-way with "database is locked".

Migrations are numbered functions applied in order, each in the transaction that records it in the
store's version table; a database newer than the code is refused rather than misread.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

__all__ = ["WRITE", "DatabaseError", "Migrations", "connect", "reading", "writing"]

#: execution option marking a connection that will write (SQLite takes its write lock at BEGIN).
WRITE = "servegate_write"


class DatabaseError(Exception):
    """The database URL is bad, its driver missing, the database unreachable or too new."""


class Migrations:
    """A store's schema: `steps[N]` takes it from version N to N+1 (append, never edit a shipped
    one); the version lives in the table `<name>_schema_version`."""

    def __init__(self, name: str, steps: Sequence[Callable[[Connection], None]]) -> None:
        self.name = name
        self.steps = list(steps)
        self.table = sa.Table(f"{name}_schema_version", sa.MetaData(), sa.Column("version", sa.Integer))
        # PostgreSQL sessions migrating the same store at once take turns on this advisory lock.
        self.lock_key = zlib.crc32(name.encode())

    @property
    def version(self) -> int:
        return len(self.steps)

    def apply(self, engine: Engine) -> int:
        """Apply the steps this database lacks; returns the version it is at now."""
        with writing(engine) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": self.lock_key})
            self.table.create(conn, checkfirst=True)
            current = conn.execute(sa.select(sa.func.max(self.table.c.version))).scalar() or 0
            if current > self.version:
                raise DatabaseError(
                    f"the {self.name} database is at schema version {current}, newer than this "
                    f"servegate knows ({self.version}): upgrade servegate"
                )
            for number in range(current + 1, self.version + 1):
                self.steps[number - 1](conn)
                conn.execute(self.table.insert().values(version=number))
        return self.version


def connect(url: str, migrations: Migrations) -> Engine:
    """An engine for `url`, with the schema migrated. Raises DatabaseError saying what is wrong."""
    what = migrations.name
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"bad {what} database URL '{url}': {exc}") from None
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = _sqlite_engine(parsed)
        else:
            engine = sa.create_engine(parsed, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError) as exc:
        hint = " (pip install 'servegate[postgres]')" if parsed.get_backend_name() == "postgresql" else ""
        raise DatabaseError(f"no database driver for '{parsed.drivername}'{hint}: {exc}") from None
    try:
        migrations.apply(engine)
    except sa.exc.OperationalError as exc:
        engine.dispose()
        raise DatabaseError(f"cannot open the {what} database {parsed!r}: {exc.orig}") from None
    except DatabaseError:
        engine.dispose()
        raise
    return engine


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A connection in a write transaction (committed on success, rolled back on error)."""
    with engine.connect() as conn:
        conn.execution_options(**{WRITE: True})
        with conn.begin():
            yield conn


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection in a read transaction (one consistent snapshot)."""
    with engine.connect() as conn, conn.begin():
        yield conn


def _sqlite_engine(url: sa.URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

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
