"""The registry's tables (SQLAlchemy Core) and their migrations; engines and the migration runner
are `serving.sqldb`'s (SQLite with WAL and immediate write transactions, or PostgreSQL)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from serving import sqldb
from serving.registry.types import RegistryError
from serving.sqldb import DatabaseError, Migrations

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
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
    #: an admin trusted it to run code as it loads (schema 3).
    sa.Column("trusted", sa.Boolean, nullable=False, server_default=sa.false()),
)

#: registry_versions columns later migrations add; _v1 creates the table without them.
_ADDED_LATER = ("trusted",)

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


def _v1(conn: Connection) -> None:
    """Models, versions, aliases and the audit log."""
    for table in (models, aliases, audit):
        table.create(conn)
    # The versions table as the first release made it, so that later steps add their columns to
    # fresh databases and old ones alike.
    first = sa.MetaData()
    models.to_metadata(first)  # what the versions table's foreign key names
    sa.Table(
        versions.name,
        first,
        *(c._copy() for c in versions.columns if c.name not in _ADDED_LATER),
        *(
            sa.ForeignKeyConstraint(fk.column_keys, [e.target_fullname for e in fk.elements])
            for fk in versions.foreign_key_constraints
        ),
    ).create(conn)


def _v2(conn: Connection) -> None:
    """Promotion gates."""
    gates.create(conn)


def _v3(conn: Connection) -> None:
    """Versions an admin trusted to run code as they load; none is, to begin with."""
    column = versions.c.trusted
    default = sa.false().compile(dialect=conn.dialect)
    conn.execute(
        sa.text(
            f"ALTER TABLE {versions.name} ADD COLUMN {column.name} "
            f"{column.type.compile(dialect=conn.dialect)} NOT NULL DEFAULT {default}"
        )
    )


MIGRATIONS = Migrations("registry", [_v1, _v2, _v3])
SCHEMA_VERSION = MIGRATIONS.version


def connect(url: str) -> Engine:
    """An engine for `url`, with the registry's schema migrated."""
    try:
        return sqldb.connect(url, MIGRATIONS)
    except DatabaseError as exc:
        raise RegistryError(str(exc)) from None
