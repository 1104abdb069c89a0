"""The metadata store's database: its tables and their migration, and the queries and conversions
between rows and the records of `_lineage.py`, shared by the store (`metadata.py`) and by `_Graph`,
the lineage walk's view of the database, which loads each node and its edges as the walk reaches
them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from serving import sqldb
from serving.pipelines._lineage import (
    Ambiguous,
    ArtifactRow,
    Edge,
    Lineage,
    MetadataError,
    NotFound,
    Registration,
    RunNotFound,
    RunSummary,
    StepRow,
)
from serving.pipelines.types import Const, OutputRef, StepResult, StepSpec, StepStatus
from serving.registry.types import RegistryError
from serving.registry.uris import is_registry_uri, parse_uri

# -- tables ---------------------------------------------------------------------------------------

_ID = sa.String(200)
_NAME = sa.String(128)
tables = sa.MetaData()


def _step_columns(*, key: bool) -> list[Any]:
    """(run_id, step_id) naming a step row, as part of the primary key or not."""
    return [
        sa.Column("run_id", _ID, primary_key=key, nullable=False),
        sa.Column("step_id", _ID, primary_key=key, nullable=False),
        sa.ForeignKeyConstraint(["run_id", "step_id"], ["pipeline_steps.run_id", "pipeline_steps.step_id"]),
    ]


runs_table = sa.Table(
    "pipeline_runs",
    tables,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("pipeline", _NAME, nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("executor", sa.String(32), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("started", sa.Float, nullable=False, index=True),
    sa.Column("finished", sa.Float),
)

steps_table = sa.Table(
    "pipeline_steps",
    tables,
    sa.Column("run_id", _ID, sa.ForeignKey("pipeline_runs.id"), primary_key=True),
    sa.Column("step_id", _ID, primary_key=True),
    #: the step's place in the spec (a topological order): how a run's steps are listed.
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("component", _NAME, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("started", sa.Float),
    sa.Column("finished", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("log_path", sa.Text),
    sa.Column("cache_key", sa.String(64), index=True),
    sa.Column("cached_from_run", _ID),
    sa.Column("cached_from_step", _ID),
    #: input parameters: resolved values, or the spec's constants and {"ref": "STEP.NAME"}.
    sa.Column("params", sa.JSON, nullable=False),
    #: parameter outputs: the return value as "output", or a NamedTuple's fields.
    sa.Column("outputs", sa.JSON, nullable=False),
    sa.Index("ix_pipeline_steps_cached_from", "cached_from_run", "cached_from_step"),
)

artifacts_table = sa.Table(
    "pipeline_artifacts",
    tables,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *_step_columns(key=False),  # the step that wrote it, whoever reused it since
    sa.Column("name", _NAME, nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

step_inputs_table = sa.Table(
    "pipeline_step_inputs",
    tables,
    *_step_columns(key=True),
    sa.Column("input_name", _NAME, primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),  # in a fan-in list
    sa.Column("artifact_id", sa.Integer, sa.ForeignKey("pipeline_artifacts.id"), nullable=False, index=True),
)

#: A step's output artifacts: the ones it wrote or, for a cached step, the ones it reused.
step_outputs_table = sa.Table(
    "pipeline_step_outputs",
    tables,
    *_step_columns(key=True),
    sa.Column("output_name", _NAME, primary_key=True),
    sa.Column("artifact_id", sa.Integer, sa.ForeignKey("pipeline_artifacts.id"), nullable=False, index=True),
)

metrics_table = sa.Table(
    "pipeline_metrics",
    tables,
    *_step_columns(key=True),
    sa.Column("name", _NAME, primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
)

registrations_table = sa.Table(
    "pipeline_registrations",
    tables,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *_step_columns(key=False),
    sa.Column("artifact_id", sa.Integer, sa.ForeignKey("pipeline_artifacts.id"), index=True),
    sa.Column("registry_uri", sa.String(300), nullable=False, index=True),
    sa.Column("time", sa.Float, nullable=False),
)


def _v1(conn: Connection) -> None:
    """Runs, steps, artifacts, lineage edges, metrics and registrations."""
    tables.create_all(conn)


MIGRATIONS = sqldb.Migrations("pipelines", [_v1])


# -- queries --------------------------------------------------------------------------------------


def _is_step(table: sa.Table, run_id: str, step_id: str) -> tuple[sa.ColumnElement[bool], ...]:
    return (table.c.run_id == run_id, table.c.step_id == step_id)


def _matching(table: sa.Table, values: Mapping[str, Any]) -> list[sa.ColumnElement[bool]]:
    return [table.c[name] == value for name, value in values.items()]


def _new_step(run_id: str, step: StepSpec, position: int) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step_id": step.id,
        "position": position,
        "component": step.component,
        "status": StepStatus.PENDING,
        "attempts": 0,
        "params": _jsonable({name: _describe(ref) for name, ref in step.params.items()}),
        "outputs": {},
    }


def _describe(ref: Any) -> Any:
    """A spec parameter as recorded before it is resolved."""
    if isinstance(ref, list | tuple):
        return [_describe(r) for r in ref]
    if isinstance(ref, Const):
        return ref.value
    if isinstance(ref, OutputRef):
        return {"ref": f"{ref.step}.{ref.name}"}
    return ref


def _step_row(conn: Connection, run_id: str, step_id: str) -> sa.Row[Any] | None:
    return conn.execute(sa.select(steps_table).where(*_is_step(steps_table, run_id, step_id))).first()


def _require_run(conn: Connection, run_id: str) -> None:
    """Writes name a run by its whole id."""
    if conn.execute(sa.select(runs_table.c.id).where(runs_table.c.id == run_id)).first() is None:
        raise RunNotFound(f"no run {run_id!r}")


def _require_step(conn: Connection, run_id: str, step_id: str) -> sa.Row[Any]:
    row = _step_row(conn, run_id, step_id)
    if row is None:
        _require_run(conn, run_id)  # a RunNotFound says more
        raise NotFound(f"no step {step_id} in run {run_id}")
    return row


def _find_run(conn: Connection, run_id: str) -> str:
    """The id of run `run_id`, or of the one run whose id starts with it."""
    c = runs_table.c
    if conn.execute(sa.select(c.id).where(c.id == run_id)).first() is not None:
        return run_id
    query = sa.select(c.id).where(c.id.startswith(run_id, autoescape=True)).order_by(c.id).limit(5)
    found = conn.execute(query).scalars().all() if run_id else []
    if not found:
        raise RunNotFound(f"no run {run_id!r}")
    if len(found) > 1:
        raise Ambiguous(f"run id prefix {run_id!r} matches more than one run: {', '.join(found)}")
    return found[0]


def _steps(conn: Connection, run_id: str, step_id: str | None = None) -> list[StepRow]:
    """The steps of a run (or one of them), with their input and output artifact ids."""

    def where(table: sa.Table) -> tuple[sa.ColumnElement[bool], ...]:
        return (table.c.run_id == run_id,) + ((table.c.step_id == step_id,) if step_id is not None else ())

    inputs: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    i, o = step_inputs_table.c, step_outputs_table.c
    for r in conn.execute(sa.select(step_inputs_table).where(*where(step_inputs_table)).order_by(i.position)):
        inputs[r.step_id][r.input_name].append(r.artifact_id)
    outputs: dict[str, dict[str, int]] = defaultdict(dict)
    for r in conn.execute(
        sa.select(step_outputs_table).where(*where(step_outputs_table)).order_by(o.output_name)
    ):
        outputs[r.step_id][r.output_name] = r.artifact_id
    plain = ("component", "status", "attempts", "started", "finished", "error", "log_path", "cache_key")
    return [
        StepRow(
            run_id=r.run_id,
            step_id=r.step_id,
            **{name: r._mapping[name] for name in plain},
            cached_from=(r.cached_from_run, r.cached_from_step) if r.cached_from_run else None,
            params=dict(r.params),
            outputs=dict(r.outputs),
            inputs={name: tuple(ids) for name, ids in sorted(inputs[r.step_id].items())},
            artifacts=outputs[r.step_id],
        )
        for r in conn.execute(
            sa.select(steps_table).where(*where(steps_table)).order_by(steps_table.c.position)
        )
    ]


def _summaries(conn: Connection, rows: list[sa.Row[Any]]) -> list[RunSummary]:
    """Runs with their step counts by status."""
    c = steps_table.c
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    query = sa.select(c.run_id, c.status, sa.func.count()).where(c.run_id.in_([r.id for r in rows]))
    for run_id, status, n in conn.execute(query.group_by(c.run_id, c.status)):
        counts[run_id][status] = n
    return [
        RunSummary(
            r.id, r.pipeline, r.status, r.executor, r.started, r.finished, dict(sorted(counts[r.id].items()))
        )
        for r in rows
    ]


_ARTIFACT_FIELDS = tuple(f.name for f in dataclasses.fields(ArtifactRow))


def _artifact(r: sa.Row[Any]) -> ArtifactRow:
    return ArtifactRow(**{name: r._mapping[name] for name in _ARTIFACT_FIELDS})


def _load_artifact(conn: Connection, artifact_id: int) -> ArtifactRow:
    row = conn.execute(sa.select(artifacts_table).where(artifacts_table.c.id == artifact_id)).first()
    if row is None:
        raise NotFound(f"no artifact {artifact_id}")
    return _artifact(row)


def _registrations(conn: Connection, where: sa.ColumnElement[bool]) -> list[Registration]:
    rows = conn.execute(sa.select(registrations_table).where(where).order_by(registrations_table.c.id))
    return [Registration(r.id, r.run_id, r.step_id, r.artifact_id, r.registry_uri, r.time) for r in rows]


def _output_artifacts(conn: Connection, run_id: str, step_id: str) -> dict[str, ArtifactRow]:
    o = step_outputs_table.c
    query = (
        sa.select(o.output_name, artifacts_table)
        .join(artifacts_table, artifacts_table.c.id == o.artifact_id)
        .where(*_is_step(step_outputs_table, run_id, step_id))
    )
    return {r.output_name: _artifact(r) for r in conn.execute(query)}


def _cached_result(row: sa.Row[Any], outputs: dict[str, ArtifactRow]) -> StepResult:
    keep = ("id", "path", "type", "sha256", "size", "metadata")
    return StepResult(
        step=row.step_id,
        status=StepStatus.CACHED,
        params=dict(row.outputs),
        artifacts={name: {k: getattr(a, k) for k in keep} for name, a in outputs.items()},
        attempts=row.attempts,
        started=row.started or 0.0,
        finished=row.finished or 0.0,
        log_path=row.log_path,
    )


def _version_uri(uri: str) -> str:
    """`registry://NAME/VERSION`, canonical; an alias names no fixed version, so it is refused."""
    try:
        parsed = parse_uri(uri.strip())
    except RegistryError as exc:
        raise MetadataError(str(exc)) from None
    if parsed.version is None:
        raise MetadataError(f"'{uri}' is an alias, which moves: name a version, registry://{parsed.model}/N")
    return str(parsed)


def _jsonable(value: Any) -> Any:
    """`value` as plain JSON: dataclasses as dicts, tuples as lists, other objects (paths) as
    strings, and NaN or infinities as strings too (PostgreSQL's JSON has no NaN)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


# -- lineage --------------------------------------------------------------------------------------

_HEX = re.compile(r"[0-9a-f]{12,64}")


class _Graph:
    """The rows of one lineage walk, loaded as it reaches them, and each node's edges (see `Edge`)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.nodes: dict[str, Any] = {}

    def resolve(self, target: str, direction: str) -> list[Any]:
        """The nodes `target` names. From a run: upstream, its registrations then its steps last
        first; downstream, its steps first first."""
        target = target.strip()
        if is_registry_uri(target):
            uri = _version_uri(target)
            found = _registrations(self.conn, registrations_table.c.registry_uri == uri)
            if not found:
                raise NotFound(f"no pipeline step registered {uri}")
            return [self._add(r) for r in found]
        sha = target.lower().removeprefix("sha256:")
        is_run = self.conn.execute(sa.select(runs_table.c.id).where(runs_table.c.id == target)).first()
        if _HEX.fullmatch(sha) and not is_run and (artifacts := self._by_sha(sha)):
            return [self._add(a) for a in artifacts]
        try:
            run_id = _find_run(self.conn, target)
        except RunNotFound:
            raise NotFound(f"no run, artifact sha256 or registry version '{target}'") from None
        steps = [self._add(s) for s in _steps(self.conn, run_id)]
        if direction == "downstream":
            return steps
        registrations = _registrations(self.conn, registrations_table.c.run_id == run_id)
        return [self._add(r) for r in registrations] + steps[::-1]

    def upstream(self, key: str) -> list[Edge]:
        node = self.nodes[key]
        if isinstance(node, Registration):
            step = self._step(node.run_id, node.step_id)
            edges = [Edge(step.key, "registered", key)]
            if node.artifact_id is not None and not _consumed(step, node.artifact_id):
                edges.append(Edge(self._artifact(node.artifact_id).key, "registered", key))
            return edges
        if isinstance(node, ArtifactRow):
            return [Edge(self._step(node.run_id, node.step_id).key, "produced", key)]
        edges = []
        for ids in node.inputs.values():
            for artifact in map(self._artifact, ids):
                edges.append(Edge(artifact.key, "consumed", key))
                # The step of this run that handed it over: its producer, or a cached step.
                o = step_outputs_table.c
                holders = sa.select(o.step_id).where(o.artifact_id == artifact.id, o.run_id == node.run_id)
                for step_id in self.conn.execute(holders.order_by(o.step_id)).scalars():
                    edges.append(Edge(self._step(node.run_id, step_id).key, "produced", artifact.key))
        if node.cached_from is not None:
            edges.append(Edge(self._step(*node.cached_from).key, "cached", key))
        return edges

    def downstream(self, key: str) -> list[Edge]:
        node = self.nodes[key]
        if isinstance(node, Registration):
            return []
        if isinstance(node, ArtifactRow):
            i = step_inputs_table.c
            readers = sa.select(i.run_id, i.step_id).distinct().where(i.artifact_id == node.id)
            edges = [
                Edge(key, "consumed", self._step(*r).key)
                for r in self.conn.execute(readers.order_by(i.run_id, i.step_id))
            ]
            for registration in _registrations(self.conn, registrations_table.c.artifact_id == node.id):
                if not _consumed(self._step(registration.run_id, registration.step_id), node.id):
                    edges.append(Edge(key, "registered", self._add(registration).key))
            return edges
        edges = [Edge(key, "produced", self._artifact(i).key) for i in node.artifacts.values()]
        by_step = sa.and_(*_is_step(registrations_table, node.run_id, node.step_id))
        edges += [Edge(key, "registered", self._add(r).key) for r in _registrations(self.conn, by_step)]
        c = steps_table.c
        reusers = sa.select(c.run_id, c.step_id).where(
            c.cached_from_run == node.run_id, c.cached_from_step == node.step_id
        )
        edges += [
            Edge(key, "cached", self._step(*r).key) for r in self.conn.execute(reusers.order_by(c.run_id))
        ]
        return edges

    def lineage(self, target: str, direction: str, roots: list[str], edges: list[Edge]) -> Lineage:
        nodes = list(self.nodes.values())
        steps = [n for n in nodes if isinstance(n, StepRow)]
        query = sa.select(runs_table).where(runs_table.c.id.in_(sorted({s.run_id for s in steps})))
        return Lineage(
            target=target,
            direction=direction,
            roots=tuple(roots),
            runs=tuple(
                sorted(_summaries(self.conn, self.conn.execute(query).all()), key=lambda r: r.started)
            ),
            steps=tuple(steps),
            artifacts=tuple(sorted((n for n in nodes if isinstance(n, ArtifactRow)), key=lambda a: a.id)),
            registrations=tuple(n for n in nodes if isinstance(n, Registration)),
            edges=tuple(edges),
        )

    def _add(self, node: Any) -> Any:
        return self.nodes.setdefault(node.key, node)

    def _step(self, run_id: str, step_id: str) -> StepRow:
        found = self.nodes.get(f"step:{run_id}/{step_id}")
        return found or self._add(_steps(self.conn, run_id, step_id)[0])

    def _artifact(self, artifact_id: int) -> ArtifactRow:
        return self.nodes.get(f"artifact:{artifact_id}") or self._add(_load_artifact(self.conn, artifact_id))

    def _by_sha(self, sha: str) -> list[ArtifactRow]:
        """The artifacts with this sha256, or with the one sha256 that starts with `sha`."""
        c = artifacts_table.c
        query = sa.select(c.sha256).distinct().where(c.sha256.startswith(sha, autoescape=True))
        shas = self.conn.execute(query.order_by(c.sha256).limit(5)).scalars().all()
        if len(shas) > 1:
            listed = ", ".join(s[:16] for s in shas)
            raise Ambiguous(f"sha256 prefix {sha} matches more than one artifact: {listed}")
        rows = self.conn.execute(sa.select(artifacts_table).where(c.sha256.in_(shas)).order_by(c.id))
        return [_artifact(r) for r in rows]


def _consumed(step: StepRow, artifact_id: int) -> bool:
    return any(artifact_id in ids for ids in step.inputs.values())
