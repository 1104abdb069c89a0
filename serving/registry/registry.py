"""The registry: models, their numbered versions, aliases, promotion gates and an audit log, over one
SQLAlchemy database (SQLite by default, PostgreSQL for a shared one) and a content-addressed
artifact store (a folder or an S3 bucket).

    registry = Registry(RegistryConfig.from_env())
    v = registry.register("mlp", "model.onnx", metrics={"accuracy": 0.97})
    registry.set_alias("mlp", "production", v.version)
    path = registry.fetch("registry://mlp@production", cache_dir)   # verified against its sha256
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from predictors.runtimes import is_import_path
from predictors.storage import StorageConfig, StorageError, fetch
from serving import sqldb
from serving.auth.storage import StoragePolicy, StorageRefused
from serving.registry import db
from serving.registry.artifacts import StoredArtifact, open_store
from serving.registry.inspect import inspect_artifact
from serving.registry.types import (
    ALIAS_PATTERN,
    GATE_OPS,
    NAME_PATTERN,
    AuditEntry,
    Gate,
    GateFailed,
    InvalidArtifact,
    ModelVersion,
    RegisteredModel,
    RegistryConflict,
    RegistryError,
    RegistryNotFound,
    RegistryUnavailable,
    VersionStatus,
    default_actor,
)
from serving.registry.uris import parse_uri

__all__ = ["Registry", "RegistryConfig"]


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Where the registry lives.

    url: a SQLAlchemy database URL (`sqlite:///PATH`, `postgresql+psycopg://...`).
    artifacts: a folder, or `s3://bucket/prefix` for an S3-compatible bucket.
    s3_endpoint_url: the S3 API endpoint (None: $AWS_ENDPOINT_URL / $S3_ENDPOINT, then AWS).
    """

    url: str
    artifacts: str
    s3_endpoint_url: str | None = None

    @classmethod
    def from_env(cls, state_dir: Path | None = None) -> RegistryConfig:
        """$SERVEGATE_REGISTRY_URL and $SERVEGATE_ARTIFACTS, defaulting to `registry.db` and
        `artifacts/` under the state dir ($SERVEGATE_STATE_DIR, else `.servegate`)."""
        root = (state_dir or Path(os.environ.get("SERVEGATE_STATE_DIR", ".servegate"))).expanduser().resolve()
        url = os.environ.get("SERVEGATE_REGISTRY_URL") or f"sqlite:///{root / 'registry.db'}"
        artifacts = os.environ.get("SERVEGATE_ARTIFACTS") or str(root / "artifacts")
        return cls(url=url, artifacts=artifacts)

    def env(self) -> tuple[tuple[str, str], ...]:
        """The environment that makes `from_env()` in another process (a replica) find this registry."""
        pairs = [("SERVEGATE_REGISTRY_URL", self.url), ("SERVEGATE_ARTIFACTS", self.artifacts)]
        if self.s3_endpoint_url:
            pairs.append(("AWS_ENDPOINT_URL", self.s3_endpoint_url))
        return tuple(pairs)


class Registry:
    """The model registry. Thread-safe; every change is one database transaction.

    `actor` on a change is who made it, for the audit log (default: `default_actor()`). Errors are
    `RegistryError` subclasses (types.py): RegistryNotFound (404), RegistryConflict / GateFailed
    (409), InvalidArtifact and plain RegistryError (400).
    """

    def __init__(
        self,
        config: RegistryConfig,
        cache_dir: Path | None = None,
        *,
        storage_policy: StoragePolicy | None = None,
    ) -> None:
        """Open (and create or migrate) the database and the artifact store. `cache_dir` is where
        `fetch` materializes artifacts (default: the storage cache, $SERVEGATE_CACHE_DIR).
        `storage_policy`: what a registration's source may be (a gateway's registry, which requests
        reach); None: anything (this machine's own CLI)."""
        self.config = config
        self.storage_policy = storage_policy
        self.cache_dir = cache_dir or StorageConfig.from_env().cache_dir
        self.store = open_store(config.artifacts, config.s3_endpoint_url)
        self._engine = db.connect(config.url)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        with _available(), sqldb.writing(self._engine) as conn:
            yield conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        with _available(), sqldb.reading(self._engine) as conn:
            yield conn

    # -- writes -------------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        source: str,
        *,
        format: str | None = None,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        description: str = "",
        run: str | None = None,
        dataset: str | None = None,
        actor: str | None = None,
    ) -> ModelVersion:
        """Create the next version of `name` (the model itself on its first version).

        `source` is a local path (file or folder), a file://, http(s):// or s3:// URI, or for the
        python format `FILE.py:Class`. The artifact is copied into the artifact store under its
        sha256; its format is checked (and inferred when `format` is None) and its signature read.
        A failed register leaves no version and no artifact behind. With a `storage_policy`, `source`
        must be something it allows (StorageRefused is reported as InvalidArtifact).
        """
        _check_name(name)
        metrics = _metrics(metrics or {})
        params, tags = _strings(params or {}, "param"), _strings(tags or {}, "tag")
        path, entry = self._source(source, format)
        inspection = inspect_artifact(path, format, entry)
        stored = self.store.put(path)
        # Where it came from, as found again from anywhere: a local path is kept absolute.
        where = source if "://" in source else str(path) + (f":{entry}" if entry else "")
        origin = {"uri": where} | ({"run": run} if run else {}) | ({"dataset": dataset} if dataset else {})
        try:
            with self._writing() as conn:
                now = time.time()
                number = _next_version(conn, name, now)
                who = actor or default_actor()
                conn.execute(
                    db.versions.insert().values(
                        model=name,
                        version=number,
                        format=inspection.format,
                        sha256=stored.sha256,
                        artifact_name=stored.name,
                        artifact_kind=stored.kind,
                        size=stored.size,
                        entry=inspection.entry,
                        status=VersionStatus.READY,
                        description=description,
                        signature=inspection.signature,
                        metrics=metrics,
                        params=params,
                        tags=tags,
                        source=origin,
                        created=now,
                        created_by=who,
                    )
                )
                _audit(conn, name, who, "registered", version=number, sha256=stored.sha256, source=source)
        except BaseException:
            self._forget(stored)
            raise
        return self.version(name, number)

    def _source(self, source: str, fmt: str | None) -> tuple[Path, str | None]:
        """The local path of what to register, and the python class it names (if any)."""
        entry = None
        if (fmt or "").lower() in ("python", "custom") or (fmt is None and is_import_path(source)):
            source, sep, entry = source.rpartition(":")
            if not sep or not source.endswith(".py"):
                raise InvalidArtifact(
                    f"a python model is registered as FILE.py:Class, not '{source}{sep}{entry}'"
                )
        try:
            return fetch(
                source, StorageConfig(cache_dir=self.cache_dir / "sources", policy=self.storage_policy)
            ), entry
        except (StorageError, StorageRefused) as exc:
            raise InvalidArtifact(f"cannot read the artifact: {exc.message}") from None

    def _forget(self, stored: StoredArtifact) -> None:
        """Remove what a failed register wrote, unless another version has come to use it."""
        if not stored.written:
            return
        with self._reading() as conn:
            used = conn.execute(
                sa.select(sa.func.count()).where(db.versions.c.sha256 == stored.sha256)
            ).scalar_one()
        if not used:
            self.store.remove(stored.written)

    def set_alias(self, name: str, alias: str, version: int, *, actor: str | None = None) -> RegisteredModel:
        """Point `alias` at `version` (moving it if it points elsewhere). Refused: an archived
        version, an alias already on that version, a version failing the alias's gates."""
        _check_alias(alias)
        with self._writing() as conn:
            row = _version_row(conn, name, version)
            if row.status == VersionStatus.ARCHIVED:
                raise RegistryConflict(f"{name}/{version} is archived; an alias cannot point at it")
            current = _aliases(conn, name).get(alias)
            if current == version:
                raise RegistryConflict(f"alias '{alias}' of {name} already points at version {version}")
            failed = [g for g in _gates(conn, name) if g.alias == alias and not _passes(g, row.metrics)]
            if failed:
                raise GateFailed(
                    f"{name}/{version} may not take alias '{alias}': "
                    + "; ".join(_gate_failure(g, row.metrics) for g in failed)
                )
            now = time.time()
            if current is None:
                conn.execute(
                    db.aliases.insert().values(model=name, alias=alias, version=version, updated=now)
                )
            else:
                conn.execute(
                    db.aliases.update()
                    .where(db.aliases.c.model == name, db.aliases.c.alias == alias)
                    .values(version=version, updated=now)
                )
            _touch(conn, name, now)
            _audit(
                conn,
                name,
                actor or default_actor(),
                "alias-set",
                alias=alias,
                version=version,
                previous=current,
            )
        return self.model(name)

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None) -> RegisteredModel:
        with self._writing() as conn:
            current = _aliases(conn, _model_row(conn, name).name).get(alias)
            if current is None:
                raise RegistryNotFound(f"model {name} has no alias '{alias}'")
            conn.execute(db.aliases.delete().where(db.aliases.c.model == name, db.aliases.c.alias == alias))
            _touch(conn, name, time.time())
            _audit(conn, name, actor or default_actor(), "alias-deleted", alias=alias, version=current)
        return self.model(name)

    def archive(self, name: str, version: int, *, actor: str | None = None) -> ModelVersion:
        """Mark a version archived: it keeps its number and artifact, takes no alias, and stays
        resolvable by `registry://NAME/VERSION` (running services keep working). Refused while an
        alias points at it."""
        with self._writing() as conn:
            row = _version_row(conn, name, version)
            if row.status == VersionStatus.ARCHIVED:
                raise RegistryConflict(f"{name}/{version} is already archived")
            held = sorted(a for a, v in _aliases(conn, name).items() if v == version)
            if held:
                raise RegistryConflict(
                    f"{name}/{version} is aliased as {', '.join(held)}: move or delete the alias first"
                )
            conn.execute(
                db.versions.update()
                .where(db.versions.c.model == name, db.versions.c.version == version)
                .values(status=VersionStatus.ARCHIVED)
            )
            _touch(conn, name, time.time())
            _audit(conn, name, actor or default_actor(), "archived", version=version)
        return self.version(name, version)

    def trust(
        self, name: str, version: int, trusted: bool = True, *, actor: str | None = None
    ) -> ModelVersion:
        """Mark a version trusted (or no longer, with `trusted=False`): whether a version that runs
        code as it loads (a python model, a pickle, a torch.export archive) may be served. Every
        version starts untrusted; only an admin should vouch for its author. Refused when the
        version already is as asked."""
        with self._writing() as conn:
            row = _version_row(conn, name, version)
            if bool(row.trusted) == trusted:
                raise RegistryConflict(f"{name}/{version} is already {'' if trusted else 'un'}trusted")
            conn.execute(
                db.versions.update()
                .where(db.versions.c.model == name, db.versions.c.version == version)
                .values(trusted=trusted)
            )
            _touch(conn, name, time.time())
            action = "trusted" if trusted else "untrusted"
            _audit(conn, name, actor or default_actor(), action, version=version, sha256=row.sha256)
        return self.version(name, version)

    def set_gates(self, name: str, gates: list[Gate], *, actor: str | None = None) -> RegisteredModel:
        """Replace the model's promotion gates (each names its alias)."""
        for gate in gates:
            _check_gate(gate)
        keys = [(g.alias, g.metric) for g in gates]
        if len(set(keys)) != len(keys):
            raise RegistryError("two gates name the same alias and metric")
        with self._writing() as conn:
            _model_row(conn, name)
            conn.execute(db.gates.delete().where(db.gates.c.model == name))
            for g in gates:
                conn.execute(
                    db.gates.insert().values(
                        model=name, alias=g.alias, metric=g.metric, op=g.op, threshold=g.threshold
                    )
                )
            _touch(conn, name, time.time())
            _audit(
                conn,
                name,
                actor or default_actor(),
                "gates-set",
                gates=[str(g) + f" ({g.alias})" for g in gates],
            )
        return self.model(name)

    # -- reads --------------------------------------------------------------------------------------

    def models(self) -> list[RegisteredModel]:
        with self._reading() as conn:
            rows = conn.execute(sa.select(db.models).order_by(db.models.c.name)).all()
            aliases = _all_aliases(conn)
            gates = _all_gates(conn)
        return [_model(row, aliases.get(row.name, {}), gates.get(row.name, ())) for row in rows]

    def model(self, name: str) -> RegisteredModel:
        with self._reading() as conn:
            row = _model_row(conn, name)
            return _model(row, _aliases(conn, name), tuple(_gates(conn, name)))

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of `name`, oldest first, archived ones included."""
        with self._reading() as conn:
            _model_row(conn, name)
            rows = conn.execute(
                sa.select(db.versions).where(db.versions.c.model == name).order_by(db.versions.c.version)
            ).all()
            by_version = _by_version(_aliases(conn, name))
        return [_version(row, by_version.get(row.version, ())) for row in rows]

    def version(self, name: str, version: int) -> ModelVersion:
        with self._reading() as conn:
            row = _version_row(conn, name, version)
            return _version(row, _by_version(_aliases(conn, name)).get(version, ()))

    def resolve(self, uri: str) -> ModelVersion:
        """The version a `registry://NAME/VERSION` or `registry://NAME@ALIAS` URI names now."""
        parsed = parse_uri(uri)
        with self._reading() as conn:
            aliases = _aliases(conn, _model_row(conn, parsed.model).name)
            version = parsed.version if parsed.version is not None else aliases.get(parsed.alias or "")
            if version is None:
                raise RegistryNotFound(f"model {parsed.model} has no alias '{parsed.alias}'")
            return _version(_version_row(conn, parsed.model, version), _by_version(aliases).get(version, ()))

    def history(self, name: str) -> list[AuditEntry]:
        """Every change to `name`, oldest first."""
        with self._reading() as conn:
            _model_row(conn, name)
            rows = conn.execute(
                sa.select(db.audit).where(db.audit.c.model == name).order_by(db.audit.c.id)
            ).all()
        return [AuditEntry(r.id, r.model, r.time, r.actor, r.action, dict(r.details)) for r in rows]

    def change_mark(self) -> int:
        """A number that grows with every change to the registry (for watchers polling it)."""
        with self._reading() as conn:
            return conn.execute(sa.select(sa.func.max(db.audit.c.id))).scalar() or 0

    def fetch(self, uri: str) -> Path:
        """A local copy of the artifact of `uri` (a registry URI), verified against its sha256 now;
        raises InvalidArtifact when the stored artifact no longer matches its digest."""
        return self.fetch_version(self.resolve(uri))

    def fetch_version(self, v: ModelVersion) -> Path:
        """`fetch` for a version already resolved."""
        return self.store.materialize(v.sha256, v.artifact_kind, v.artifact_name, self.cache_dir, v.uri)


@contextlib.contextmanager
def _available() -> Iterator[None]:
    """A database that is down, or locked past the busy timeout, is a RegistryUnavailable (503)."""
    try:
        yield
    except sa.exc.OperationalError as exc:
        raise RegistryUnavailable(f"the registry database is unavailable: {exc.orig}") from None


# -- queries ------------------------------------------------------------------------------------------


def _next_version(conn: Connection, name: str, now: float) -> int:
    """Raise the model's version counter (creating the model) and return the new number.

    The UPDATE locks the model's row until commit, so concurrent registers take turns, and a
    rolled-back register takes its number back with it: numbers are gap-free.
    """
    values = {"name": name, "description": "", "created": now, "updated": now, "last_version": 0}
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    conn.execute(insert(db.models).values(values).on_conflict_do_nothing())
    return conn.execute(
        db.models.update()
        .where(db.models.c.name == name)
        .values(last_version=db.models.c.last_version + 1, updated=now)
        .returning(db.models.c.last_version)
    ).scalar_one()


def _touch(conn: Connection, name: str, now: float) -> None:
    conn.execute(db.models.update().where(db.models.c.name == name).values(updated=now))


def _audit(conn: Connection, name: str, actor: str, action: str, **details: Any) -> None:
    conn.execute(
        db.audit.insert().values(model=name, time=time.time(), actor=actor, action=action, details=details)
    )


def _model_row(conn: Connection, name: str) -> Any:
    row = conn.execute(sa.select(db.models).where(db.models.c.name == name)).first()
    if row is None:
        raise RegistryNotFound(f"model '{name}' is not registered")
    return row


def _version_row(conn: Connection, name: str, version: int) -> Any:
    row = conn.execute(
        sa.select(db.versions).where(db.versions.c.model == name, db.versions.c.version == version)
    ).first()
    if row is None:
        model = _model_row(conn, name)
        raise RegistryNotFound(f"model {name} has no version {version} (latest is {model.last_version})")
    return row


def _aliases(conn: Connection, name: str) -> dict[str, int]:
    rows = conn.execute(sa.select(db.aliases.c.alias, db.aliases.c.version).where(db.aliases.c.model == name))
    return dict(sorted((alias, version) for alias, version in rows))


def _all_aliases(conn: Connection) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for model, alias, version in conn.execute(
        sa.select(db.aliases.c.model, db.aliases.c.alias, db.aliases.c.version).order_by(db.aliases.c.alias)
    ):
        out.setdefault(model, {})[alias] = version
    return out


def _gates(conn: Connection, name: str) -> list[Gate]:
    rows = conn.execute(
        sa.select(db.gates).where(db.gates.c.model == name).order_by(db.gates.c.alias, db.gates.c.metric)
    )
    return [Gate(r.alias, r.metric, r.op, r.threshold) for r in rows]


def _all_gates(conn: Connection) -> dict[str, tuple[Gate, ...]]:
    out: dict[str, list[Gate]] = {}
    for r in conn.execute(sa.select(db.gates).order_by(db.gates.c.alias, db.gates.c.metric)):
        out.setdefault(r.model, []).append(Gate(r.alias, r.metric, r.op, r.threshold))
    return {k: tuple(v) for k, v in out.items()}


def _by_version(aliases: dict[str, int]) -> dict[int, tuple[str, ...]]:
    out: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        out.setdefault(version, []).append(alias)
    return {v: tuple(sorted(a)) for v, a in out.items()}


def _model(row: Any, aliases: dict[str, int], gates: tuple[Gate, ...]) -> RegisteredModel:
    return RegisteredModel(
        row.name, row.description, row.created, row.updated, row.last_version, aliases, gates
    )


def _version(row: Any, aliases: tuple[str, ...]) -> ModelVersion:
    return ModelVersion(
        model=row.model,
        version=row.version,
        format=row.format,
        sha256=row.sha256,
        artifact_name=row.artifact_name,
        artifact_kind=row.artifact_kind,
        size=row.size,
        status=row.status,
        created=row.created,
        created_by=row.created_by,
        description=row.description,
        signature=row.signature,
        metrics=dict(row.metrics),
        params=dict(row.params),
        tags=dict(row.tags),
        source=dict(row.source),
        aliases=aliases,
        entry=row.entry,
        trusted=bool(row.trusted),
    )


# -- validation ---------------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not NAME_PATTERN.match(name or ""):
        raise RegistryError(
            f"bad model name '{name}': up to 128 letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )


def _check_alias(alias: str) -> None:
    if alias == "latest" or not ALIAS_PATTERN.match(alias or ""):
        raise RegistryError(
            f"bad alias '{alias}': a lower-case word like 'production' "
            "(letters, digits, '-', '_'; not 'latest')"
        )


def _check_gate(gate: Gate) -> None:
    _check_alias(gate.alias)
    if gate.op not in GATE_OPS:
        raise RegistryError(
            f"bad gate operator '{gate.op}' for {gate.metric}: use one of {' '.join(GATE_OPS)}"
        )
    if not gate.metric or not isinstance(gate.threshold, int | float) or not math.isfinite(gate.threshold):
        raise RegistryError(f"bad gate '{gate}': a metric name and a finite threshold")


def _metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if not key:
            raise RegistryError("a metric needs a name")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise RegistryError(f"metric '{key}' must be a number, not {value!r}") from None
        if not math.isfinite(number):
            raise RegistryError(f"metric '{key}' must be finite, not {value!r}")
        out[key] = number
    return out


def _strings(values: Mapping[str, Any], what: str) -> dict[str, str]:
    if any(not key for key in values):
        raise RegistryError(f"a {what} needs a name")
    return {str(k): str(v) for k, v in values.items()}


def _passes(gate: Gate, metrics: Mapping[str, float]) -> bool:
    return gate.metric in metrics and gate.holds(metrics[gate.metric])


def _gate_failure(gate: Gate, metrics: Mapping[str, float]) -> str:
    if gate.metric not in metrics:
        return f"gate {gate} needs metric '{gate.metric}', which this version does not have"
    return f"gate {gate} fails: {gate.metric} is {metrics[gate.metric]:g}"
