"""The pipelines API's JSON: runs, one run with its DAG, and lineage graphs joined with the
InferenceServices that serve their registry versions. Pure functions of the metadata store's records
(and of the gateway's InferenceService views), so each is tested without a server or a database.

Times are Unix seconds; durations `duration_s`. Lineage nodes are named by the store's keys
(`step:RUN/STEP`, `artifact:ID`, `registration:ID`) plus `service:NAMESPACE/NAME` for the services
joined in; edges go the way data flows, with the store's kinds (`produced`, `consumed`, `registered`,
`cached`) and `served` (a registration -> a service whose traffic goes to that version).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from serving.pipelines._lineage import ArtifactRow, Lineage, Registration, RunSummary, RunView, StepRow
from serving.registry.types import RegistryError
from serving.registry.uris import is_registry_uri, parse_uri

__all__ = [
    "dag_edges",
    "lineage_target",
    "lineage_view",
    "run_detail",
    "run_summary",
    "served_by",
]

#: what a lineage target may be made of: registry URIs, NAME@VERSION, sha256 (prefixes), run ids.
_TARGET = re.compile(r"[A-Za-z0-9._:/@-]{1,300}")
_TARGET_FORMS = "registry://NAME/VERSION, NAME@VERSION, an artifact sha256 (12+ hex digits) or a run id"


# -- runs -----------------------------------------------------------------------------------------


def run_summary(run: RunSummary) -> dict[str, Any]:
    """A run as the runs list shows it; `steps`: step count by state."""
    return {
        "id": run.id,
        "pipeline": run.pipeline,
        "status": run.status,
        "executor": run.executor,
        "started": run.started,
        "finished": run.finished,
        "duration_s": run.duration,
        "steps": dict(run.steps),
    }


def run_detail(view: RunView) -> dict[str, Any]:
    """A run with its steps (in the spec's order), the DAG's edges between them and what it
    registered."""
    artifacts = {a.id: a for a in view.artifacts}
    metrics: dict[str, dict[str, float]] = {}
    for m in view.metrics:
        metrics.setdefault(m.step_id, {})[m.name] = m.value
    steps = [_step(s, artifacts, metrics.get(s.step_id, {})) for s in view.steps]
    return {
        **run_summary(view.run),
        "params": view.params,
        "steps": steps,
        "edges": dag_edges(view.spec, [s.step_id for s in view.steps]),
        "registrations": [
            {"uri": r.registry_uri, "step": r.step_id, "artifact": r.artifact_id, "time": r.time}
            for r in view.registrations
        ],
    }


def _step(step: StepRow, artifacts: Mapping[int, ArtifactRow], metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "id": step.step_id,
        "component": step.component,
        "state": step.status,
        "attempts": step.attempts,
        "cache_source": _source(step),
        "parameters": step.params,
        "outputs": step.outputs,
        "inputs": {name: list(ids) for name, ids in step.inputs.items()},
        "artifacts": [
            _artifact(artifacts[artifact_id], name)
            for name, artifact_id in step.artifacts.items()
            if artifact_id in artifacts
        ],
        "metrics": metrics,
        "error": step.error,
        "has_log": step.log_path is not None,
        "started": step.started,
        "finished": step.finished,
        "duration_s": step.duration,
    }


def _source(step: StepRow) -> dict[str, str] | None:
    return {"run": step.cached_from[0], "step": step.cached_from[1]} if step.cached_from else None


def _artifact(a: ArtifactRow, name: str | None = None) -> dict[str, Any]:
    """`name`: the output name it has for the step showing it (a cached step's is the source's)."""
    return {
        "id": a.id,
        "name": name or a.name,
        "type": a.type,
        "sha256": a.sha256,
        "size": a.size,
        "path": a.path,
        "metadata": a.metadata,
        "run": a.run_id,
        "step": a.step_id,
    }


def dag_edges(spec: Mapping[str, Any], step_ids: Iterable[str]) -> list[list[str]]:
    """`[upstream, downstream]` for every dependency of the stored spec (`PipelineSpec.as_dict()`)
    between steps in `step_ids`: parameter and artifact references, conditions' left sides and
    `after`, as `StepSpec.upstream` reads them. In the steps' order, each pair once."""
    known = list(dict.fromkeys(step_ids))
    order = {step_id: i for i, step_id in enumerate(known)}
    edges: dict[tuple[str, str], None] = {}
    for step in spec.get("steps", []):
        target = step.get("id")
        if target not in order:
            continue
        sources = set(step.get("after", []))
        sources |= {c["left"]["step"] for c in step.get("conditions", []) if _is_ref(c.get("left"))}
        for ref in [*step.get("params", {}).values(), *step.get("artifacts", {}).values()]:
            sources |= _ref_steps(ref)
        for source in sorted(s for s in sources if s in order and s != target):
            edges.setdefault((source, target))
    return [list(e) for e in sorted(edges, key=lambda e: (order[e[1]], order[e[0]]))]


def _is_ref(value: Any) -> bool:
    """An OutputRef or ArtifactRef as stored ({"step", "name"}); a constant is {"value": ...}."""
    return isinstance(value, Mapping) and isinstance(value.get("step"), str) and "value" not in value


def _ref_steps(value: Any) -> set[str]:
    if isinstance(value, list):  # a fan-in over a ParallelFor
        return {s for v in value for s in _ref_steps(v)}
    return {value["step"]} if _is_ref(value) else set()


# -- lineage --------------------------------------------------------------------------------------


def lineage_target(text: str) -> str:
    """A lineage target as the metadata store takes it: `registry://NAME/VERSION` (canonical) for
    a registry version given as that or as `NAME@VERSION` / `NAME/VERSION`; anything else (a sha256
    or run id, or a prefix of one) as given. ValueError for what names nothing: empty, odd
    characters, a bad registry name, an alias (it moves)."""
    text = text.strip()
    if not _TARGET.fullmatch(text):
        raise ValueError(f"bad lineage target {text[:80]!r}: give {_TARGET_FORMS}")
    if is_registry_uri(text):
        uri = text
    elif "/" in text:
        uri = f"registry://{text}"
    elif "@" in text:
        name, _, version = text.partition("@")
        uri = f"registry://{name}/{version}" if version.isdigit() else f"registry://{text}"
    else:
        return text
    try:
        parsed = parse_uri(uri)
    except RegistryError as exc:
        raise ValueError(f"bad lineage target: {exc.message}") from None
    if parsed.version is None:
        raise ValueError(
            f"'{text}' names an alias, which moves: name a version (registry://{parsed.model}/N or "
            f"{parsed.model}@N)"
        )
    return str(parsed)


def served_by(services: Iterable[Mapping[str, Any]], versions: Iterable[str]) -> list[dict[str, Any]]:
    """Which InferenceServices send traffic to which of `versions` (registry://NAME/VERSION): one
    row per service, component and traffic entry whose storageUri pins one of them (a service
    following `registry://NAME@ALIAS` shows the version each revision was pinned to). `services`
    are the control API's views (`status.components.<kind>.traffic[]`); anything else is skipped."""
    wanted = {v for v in map(_pinned_version, versions) if v is not None}
    rows = []
    for isvc in services:
        metadata = isvc.get("metadata") or {}
        components = ((isvc.get("status") or {}).get("components")) or {}
        for component, state in components.items():
            for entry in (state or {}).get("traffic") or []:
                version = _pinned_version(entry.get("storageUri"))
                if version is None or version not in wanted:
                    continue
                rows.append(
                    {
                        "version": version,
                        "name": metadata.get("name", ""),
                        "namespace": metadata.get("namespace", "default"),
                        "component": component,
                        "revision": entry.get("revisionName"),
                        "percent": entry.get("percent"),
                        "latestRevision": bool(entry.get("latestRevision")),
                    }
                )
    return rows


def _pinned_version(uri: Any) -> str | None:
    """`registry://NAME/VERSION`, canonical, when `uri` names one version; else None."""
    if not isinstance(uri, str) or not is_registry_uri(uri):
        return None
    try:
        parsed = parse_uri(uri)
    except RegistryError:
        return None
    return str(parsed) if parsed.version is not None else None


def lineage_view(graph: Lineage, services: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The lineage graph as nodes and edges, with the services serving its registry versions
    joined in (nodes `service:NAMESPACE/NAME`, `served` edges from each matching registration)."""
    nodes = [_step_node(s) for s in graph.steps]
    nodes += [_artifact_node(a) for a in graph.artifacts]
    nodes += [_registration_node(r) for r in graph.registrations]
    edges = [{"source": e.source, "kind": e.kind, "target": e.target} for e in graph.edges]
    rows = served_by(services, {r.registry_uri for r in graph.registrations})
    by_service: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = f"service:{row['namespace']}/{row['name']}"
        node = by_service.setdefault(
            key,
            {
                "id": key,
                "kind": "service",
                "label": row["name"],
                "name": row["name"],
                "namespace": row["namespace"],
                "traffic": [],
            },
        )
        node["traffic"].append({k: row[k] for k in ("version", "component", "revision", "percent")})
    nodes += by_service.values()
    for r in graph.registrations:
        version = _pinned_version(r.registry_uri)
        for key, node in by_service.items():
            if any(t["version"] == version for t in node["traffic"]):
                edges.append({"source": r.key, "kind": "served", "target": key})
    return {
        "target": graph.target,
        "direction": "up" if graph.direction == "upstream" else "down",
        "roots": list(graph.roots),
        "runs": [run_summary(r) for r in graph.runs],
        "nodes": nodes,
        "edges": edges,
        "services": rows,
    }


def _step_node(s: StepRow) -> dict[str, Any]:
    return {
        "id": s.key,
        "kind": "step",
        "label": f"{s.step_id} ({s.status.lower()})",
        "run": s.run_id,
        "step": s.step_id,
        "component": s.component,
        "state": s.status,
        "attempts": s.attempts,
        "cache_source": _source(s),
        "started": s.started,
        "finished": s.finished,
    }


def _artifact_node(a: ArtifactRow) -> dict[str, Any]:
    fields = _artifact(a)
    return {
        "id": a.key,
        "kind": "artifact",
        "label": f"{a.type} {a.name}",
        "artifact": fields.pop("id"),
        **fields,
    }


def _registration_node(r: Registration) -> dict[str, Any]:
    return {
        "id": r.key,
        "kind": "registration",
        "label": r.registry_uri,
        "uri": r.registry_uri,
        "run": r.run_id,
        "step": r.step_id,
        "artifact": r.artifact_id,
        "time": r.time,
    }
