"""The pipeline metadata store (Kubeflow's "logbook"): every run, step, parameter, artifact (with its
sha256) and metric, in one SQL database (SQLite under the state dir by default, or PostgreSQL).

The executor writes as a run goes (`start_run`, `step_started`, `record_artifact`, `step_finished`,
`record_registration`, `finish_run`), each call one transaction; step caching asks `cached(key)`;
`runs` and `run` list and show runs; `lineage` and `descendants` walk the graph upstream ("which data
and run produced this registry version") and downstream ("what came of this dataset").

Edges are recorded, never inferred from paths or names: a step's inputs are the artifact ids the
executor says it consumed, its outputs the artifacts recorded for it or, for a cached step, the very
artifacts of the execution it reused, so lineage through a cached step still reaches the original
producer. The tables and the queries over them (the lineage walk's among them) live in `_schema.py`;
the records returned, the errors raised, and the lineage graph's rules of rendering in `_lineage.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from serving import sqldb
from serving.pipelines._lineage import (
    Ambiguous,
    ArtifactRow,
    Edge,
    Lineage,
    MetadataError,
    Metric,
    NotFound,
    Registration,
    RunNotFound,
    RunSummary,
    RunView,
    StepRow,
    walk,
)
from serving.pipelines._schema import (
    MIGRATIONS,
    _artifact,
    _cached_result,
    _find_run,
    _Graph,
    _is_step,
    _jsonable,
    _load_artifact,
    _matching,
    _new_step,
    _output_artifacts,
    _registrations,
    _require_run,
    _require_step,
    _step_row,
    _steps,
    _summaries,
    _version_uri,
    artifacts_table,
    metrics_table,
    registrations_table,
    runs_table,
    step_inputs_table,
    step_outputs_table,
    steps_table,
)
from serving.pipelines._schema import tables as tables  # the store's sa.MetaData, importable from here
from serving.pipelines.types import PipelineSpec, StepResult, StepSpec, StepStatus
from serving.registry.artifacts import artifact_digest

__all__ = [
    "Ambiguous",
    "ArtifactRow",
    "CacheHit",
    "Edge",
    "Lineage",
    "MetadataError",
    "MetadataStore",
    "Metric",
    "NotFound",
    "Registration",
    "RunNotFound",
    "RunSummary",
    "RunTotals",
    "RunView",
    "StepRow",
    "cache_key",
    "default_url",
]


def default_url(state_dir: Path | None = None) -> str:
    """$SERVEGATE_METADATA_URL, else `pipelines.db` under the state dir ($SERVEGATE_STATE_DIR, else
    `.servegate`)."""
    if url := os.environ.get("SERVEGATE_METADATA_URL"):
        return url
    root = (state_dir or Path(os.environ.get("SERVEGATE_STATE_DIR", ".servegate"))).expanduser().resolve()
    return f"sqlite:///{root / 'pipelines.db'}"


# -- cache hits and keys --------------------------------------------------------------------------


class CacheHit(NamedTuple):
    """An earlier execution a step may reuse: `source` is its (run id, step id), `result` its
    outputs with status CACHED, each artifact {"id", "path", "type", "sha256", "size", "metadata"}."""

    source: tuple[str, str]
    result: StepResult


def cache_key(
    code_hash: str, component: str, params: dict[str, Any], input_sha256s: dict[str, list[str]]
) -> str:
    """The sha256 of a step's canonical JSON: its code, component, parameter values and input
    artifacts' sha256s. Names are unordered; a fan-in list keeps its order (the component sees it).
    Parameter values must be JSON-able."""
    payload = {
        "v": 1,
        "code": code_hash,
        "component": component,
        "params": params,
        "inputs": {name: list(shas) for name, shas in input_sha256s.items()},
    }
    try:
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except TypeError as exc:
        raise MetadataError(f"cannot make a cache key of these parameters: {exc}") from None
    return hashlib.sha256(canonical.encode()).hexdigest()


class RunTotals(NamedTuple):
    """How many runs of `pipeline` are in `status` (RUNNING, SUCCEEDED, FAILED), and when the
    latest of them started (Unix seconds)."""

    pipeline: str
    status: str
    runs: int
    last_started: float


# -- the store ------------------------------------------------------------------------------------

RUN_STATUSES = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED})
#: a step ending so made no attempt of its own, whatever its result says.
_NOT_RUN = frozenset({StepStatus.SKIPPED, StepStatus.CACHED})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class MetadataStore:
    """The metadata store over one database URL (created and migrated on open). Thread-safe; every
    write is one transaction. `clock` gives the times the store stamps itself (Unix seconds).
    Errors are MetadataError: NotFound / RunNotFound (also LookupErrors), Ambiguous."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        try:
            self._engine = sqldb.connect(url, MIGRATIONS)
        except sqldb.DatabaseError as exc:
            raise MetadataError(str(exc)) from None
        self._clock = clock

    @classmethod
    def from_env(cls, state_dir: Path | None = None) -> MetadataStore:
        return cls(default_url(state_dir))

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes -----------------------------------------------------------------------------------

    def start_run(self, spec: PipelineSpec, executor: str) -> str:
        """Record a new RUNNING run of `spec`, its steps PENDING; returns its id,
        `<pipeline>-<YYYYmmdd-HHMMSS, UTC>-<6 hex>`."""
        now = self._clock()
        run_id = f"{_UNSAFE.sub('-', spec.name)}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}"
        run_id += f"-{secrets.token_hex(3)}"
        with sqldb.writing(self._engine) as conn:
            conn.execute(
                runs_table.insert().values(
                    id=run_id,
                    pipeline=spec.name,
                    status=StepStatus.RUNNING,
                    executor=executor,
                    params=_jsonable(spec.params),
                    spec=_jsonable(spec.as_dict()),
                    started=now,
                )
            )
            if spec.steps:
                conn.execute(
                    steps_table.insert(), [_new_step(run_id, s, i) for i, s in enumerate(spec.steps)]
                )
        return run_id

    def step_started(
        self,
        run_id: str,
        step: StepSpec,
        attempt: int,
        cache_key: str | None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Attempt `attempt` (from 1) of `step` began. `params`: its resolved input parameters (else
        the spec's are recorded: constants, and upstream outputs as {"ref": "STEP.NAME"})."""
        with sqldb.writing(self._engine) as conn:
            row = _step_row(conn, run_id, step.id)
            if row is None:  # a step the run's spec did not list
                _require_run(conn, run_id)
                count = sa.select(sa.func.count()).where(steps_table.c.run_id == run_id)
                conn.execute(
                    steps_table.insert().values(_new_step(run_id, step, conn.execute(count).scalar_one()))
                )
            values = {
                "status": StepStatus.RUNNING,
                "attempts": attempt,
                "cache_key": cache_key,
                "error": None,
            }
            if row is None or row.started is None:
                values["started"] = self._clock()
            if params is not None:
                values["params"] = _jsonable(dict(params))
            conn.execute(steps_table.update().where(*_is_step(steps_table, run_id, step.id)).values(values))

    def record_artifact(
        self,
        run_id: str,
        step_id: str,
        name: str,
        type_name: str,
        path: str,
        sha256: str,
        size: int,
        metadata: dict[str, Any],
    ) -> int:
        """Record output artifact `name` of a step; returns its id (recording a name again makes the
        new artifact the step's output of that name)."""
        with sqldb.writing(self._engine) as conn:
            _require_step(conn, run_id, step_id)
            insert = artifacts_table.insert().values(
                run_id=run_id,
                step_id=step_id,
                name=name,
                type=type_name,
                path=str(path),
                sha256=sha256.lower(),
                size=size,
                metadata=_jsonable(metadata),
                created=self._clock(),
            )
            artifact_id = int(conn.execute(insert).inserted_primary_key[0])
            output = {"run_id": run_id, "step_id": step_id, "output_name": name}
            conn.execute(step_outputs_table.delete().where(*_matching(step_outputs_table, output)))
            conn.execute(step_outputs_table.insert().values(artifact_id=artifact_id, **output))
        return artifact_id

    def step_finished(
        self,
        run_id: str,
        result: StepResult,
        inputs: dict[str, list[int]],
        cache_key: str | None,
        cached_from: tuple[str, str] | None = None,
    ) -> None:
        """A step ended SUCCEEDED, FAILED, SKIPPED, or CACHED from the execution `cached_from`
        (run id, step id), whose output artifacts become this step's. `inputs`: input name -> the
        artifact ids it consumed. Its numeric parameter outputs and every number in its Metrics
        artifacts' metadata become its metrics (a Metrics artifact's value wins a name clash)."""
        step = (run_id, result.step)
        with sqldb.writing(self._engine) as conn:
            row = _require_step(conn, *step)
            attempts = row.attempts if result.status in _NOT_RUN else max(row.attempts, result.attempts)
            if cached_from is not None:
                if _step_row(conn, *cached_from) is None:
                    raise NotFound(f"no step {cached_from[1]} in run {cached_from[0]} to reuse")
                _copy_outputs(conn, cached_from, step)
            conn.execute(
                steps_table.update()
                .where(*_is_step(steps_table, *step))
                .values(
                    status=result.status,
                    attempts=attempts,
                    started=result.started or row.started,
                    finished=result.finished or self._clock(),
                    error=result.error,
                    log_path=result.log_path or row.log_path,
                    cache_key=cache_key,
                    cached_from_run=cached_from[0] if cached_from else None,
                    cached_from_step=cached_from[1] if cached_from else None,
                    outputs=_jsonable(result.params),
                )
            )
            consumed = [
                {"input_name": name, "position": i, "artifact_id": artifact_id}
                for name, ids in inputs.items()
                for i, artifact_id in enumerate(ids)
            ]
            metrics = [{"name": n, "value": v} for n, v in _metric_values(conn, step, result.params).items()]
            for table, rows in ((step_inputs_table, consumed), (metrics_table, metrics)):
                conn.execute(table.delete().where(*_is_step(table, *step)))
                if rows:
                    conn.execute(
                        table.insert(), [{"run_id": run_id, "step_id": result.step, **r} for r in rows]
                    )

    def finish_run(self, run_id: str, status: str) -> None:
        """The run ended: SUCCEEDED or FAILED."""
        if status not in RUN_STATUSES:
            raise MetadataError(f"a run finishes SUCCEEDED or FAILED, not {status!r}")
        update = runs_table.update().where(runs_table.c.id == run_id)
        with sqldb.writing(self._engine) as conn:
            if conn.execute(update.values(status=status, finished=self._clock())).rowcount == 0:
                raise RunNotFound(f"no run {run_id!r}")

    def record_registration(
        self, run_id: str, step_id: str, artifact_id: int | None, registry_uri: str
    ) -> None:
        """Step `step_id` registered `artifact_id` (None: no artifact the store knows) as the registry
        version `registry_uri` (registry://NAME/VERSION; an alias, which moves, is refused)."""
        uri = _version_uri(registry_uri)
        with sqldb.writing(self._engine) as conn:
            _require_step(conn, run_id, step_id)
            conn.execute(
                registrations_table.insert().values(
                    run_id=run_id,
                    step_id=step_id,
                    artifact_id=artifact_id,
                    registry_uri=uri,
                    time=self._clock(),
                )
            )

    # -- reads ------------------------------------------------------------------------------------

    def cached(self, cache_key: str) -> CacheHit | None:
        """The newest SUCCEEDED execution with this cache key whose output artifacts are all still on
        disk with their recorded sha256 (each hashed again), with its (run id, step id); else None.
        A CACHED execution is never a source: it points at the one it reused."""
        c = steps_table.c
        query = (
            sa.select(steps_table)
            .where(c.cache_key == cache_key, c.status == StepStatus.SUCCEEDED)
            .order_by(c.finished.desc())
        )
        with sqldb.reading(self._engine) as conn:
            candidates = [
                (row, _output_artifacts(conn, row.run_id, row.step_id)) for row in conn.execute(query)
            ]
        # Hash outside the transaction: artifacts may be large.
        for row, outputs in candidates:
            if all(_intact(a) for a in outputs.values()):
                return CacheHit((row.run_id, row.step_id), _cached_result(row, outputs))
        return None

    def runs(self, limit: int = 50, pipeline: str | None = None) -> list[RunSummary]:
        """The newest `limit` runs (of `pipeline`, if given), newest first."""
        query = sa.select(runs_table).order_by(runs_table.c.started.desc(), runs_table.c.id.desc())
        if pipeline is not None:
            query = query.where(runs_table.c.pipeline == pipeline)
        with sqldb.reading(self._engine) as conn:
            return _summaries(conn, conn.execute(query.limit(limit)).all())

    def run_totals(self) -> list[RunTotals]:
        """Runs counted per pipeline and status, in one grouped query (what `/metrics` exports)."""
        c = runs_table.c
        query = (
            sa.select(c.pipeline, c.status, sa.func.count(), sa.func.max(c.started))
            .group_by(c.pipeline, c.status)
            .order_by(c.pipeline, c.status)
        )
        with sqldb.reading(self._engine) as conn:
            return [RunTotals(p, s, int(n), float(t)) for p, s, n, t in conn.execute(query)]

    def run(self, run_id: str) -> RunView:
        """Everything about run `run_id`, or about the one run whose id starts with it."""
        with sqldb.reading(self._engine) as conn:
            run_id = _find_run(conn, run_id)
            row = conn.execute(sa.select(runs_table).where(runs_table.c.id == run_id)).one()
            steps = _steps(conn, run_id)
            ids = sorted({i for s in steps for i in s.artifacts.values()})
            a, m = artifacts_table.c, metrics_table.c
            artifacts = conn.execute(sa.select(artifacts_table).where(a.id.in_(ids)).order_by(a.id))
            metrics = conn.execute(
                sa.select(metrics_table).where(m.run_id == run_id).order_by(m.step_id, m.name)
            )
            return RunView(
                run=_summaries(conn, [row])[0],
                params=dict(row.params),
                spec=dict(row.spec),
                steps=tuple(steps),
                artifacts=tuple(_artifact(r) for r in artifacts),
                metrics=tuple(Metric(r.step_id, r.name, r.value) for r in metrics),
                registrations=tuple(_registrations(conn, registrations_table.c.run_id == run_id)),
            )

    def artifact(self, artifact_id: int) -> ArtifactRow:
        with sqldb.reading(self._engine) as conn:
            return _load_artifact(conn, artifact_id)

    def artifacts_by_sha256(self, sha256: str) -> list[ArtifactRow]:
        """Every recorded artifact with this exact sha256, oldest first."""
        query = sa.select(artifacts_table).where(artifacts_table.c.sha256 == sha256.lower())
        with sqldb.reading(self._engine) as conn:
            return [_artifact(r) for r in conn.execute(query.order_by(artifacts_table.c.id))]

    def lineage(self, target: str) -> Lineage:
        """Everything upstream of `target`: a registry URI (registry://NAME/VERSION), an artifact's
        sha256 (or a unique prefix of 12+ hex digits), or a run id (or a unique prefix of one).
        From a registration: the step that registered it, the artifact, the step that wrote that,
        its inputs, their producers... back to the roots; through a cached step, to the execution
        it reused."""
        return self._walk(target, "upstream")

    def descendants(self, target: str) -> Lineage:
        """Everything downstream of `target` (named as for `lineage`): every step that consumed it,
        transitively, what they wrote, and every registry version registered from that."""
        return self._walk(target, "downstream")

    def _walk(self, target: str, direction: str) -> Lineage:
        with sqldb.reading(self._engine) as conn:
            graph = _Graph(conn)
            roots = [node.key for node in graph.resolve(target, direction)]
            edges = walk(roots, graph.upstream if direction == "upstream" else graph.downstream)
            return graph.lineage(target, direction, roots, edges)


# -- helpers of the store -------------------------------------------------------------------------


def _copy_outputs(conn: Connection, source: tuple[str, str], target: tuple[str, str]) -> None:
    """Make the source execution's output artifacts the target step's too (a cache reuse)."""
    o = step_outputs_table.c
    conn.execute(step_outputs_table.delete().where(*_is_step(step_outputs_table, *target)))
    reused = conn.execute(
        sa.select(o.output_name, o.artifact_id).where(*_is_step(step_outputs_table, *source))
    )
    rows = [{"run_id": target[0], "step_id": target[1], **r._mapping} for r in reused]
    if rows:
        conn.execute(step_outputs_table.insert(), rows)


def _metric_values(conn: Connection, step: tuple[str, str], params: Mapping[str, Any]) -> dict[str, float]:
    values = {name: float(v) for name, v in params.items() if _is_number(v)}
    for artifact in _output_artifacts(conn, *step).values():
        if artifact.type == "Metrics":
            values |= {name: float(v) for name, v in artifact.metadata.items() if _is_number(v)}
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _intact(artifact: ArtifactRow) -> bool:
    """Whether the artifact is still on disk with the sha256 it was recorded with."""
    path = Path(artifact.path)
    with contextlib.suppress(OSError):
        return path.exists() and artifact_digest(path)[0] == artifact.sha256
    return False
