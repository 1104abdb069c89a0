"""What the metadata store returns and raises: its records (runs, steps, artifacts, metrics,
registrations), its errors, and the lineage graph over the records, with the breadth-first walk that
builds it and its rendering as an indented tree for the CLI. Plain data: the SQL that fills these
lives in `_schema.py`, the store that hands them out in `metadata.py`.

Lineage nodes are steps, artifacts and registrations, each named by its `key`: `step:RUN/STEP`,
`artifact:ID`, `registration:ID`. The walk knows nothing of the database: `expand(key)` gives a
node's edges in the walk's direction, and every node at either end of them is visited in turn.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Ambiguous",
    "ArtifactRow",
    "Edge",
    "Lineage",
    "MetadataError",
    "Metric",
    "NotFound",
    "Registration",
    "RunNotFound",
    "RunSummary",
    "RunView",
    "StepRow",
    "walk",
]

# -- records --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run as `runs` lists it. `steps`: step count by status. Times are Unix seconds."""

    id: str
    pipeline: str
    status: str
    executor: str
    started: float
    finished: float | None
    steps: dict[str, int]

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else self.finished - self.started

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"duration": self.duration}


@dataclass(frozen=True, slots=True)
class StepRow:
    """One step of one run. params: its input parameters; outputs: its parameter outputs; inputs:
    input name -> the artifact ids it consumed; artifacts: output name -> artifact id (for a cached
    step, the reused execution's); cached_from: (run id, step id) of that execution."""

    run_id: str
    step_id: str
    component: str
    status: str
    attempts: int
    started: float | None
    finished: float | None
    error: str | None
    log_path: str | None
    cache_key: str | None
    cached_from: tuple[str, str] | None
    params: dict[str, Any]
    outputs: dict[str, Any]
    inputs: dict[str, tuple[int, ...]]
    artifacts: dict[str, int]

    @property
    def key(self) -> str:
        return f"step:{self.run_id}/{self.step_id}"

    @property
    def duration(self) -> float | None:
        return None if self.started is None or self.finished is None else self.finished - self.started

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"duration": self.duration}


@dataclass(frozen=True, slots=True)
class ArtifactRow:
    """An artifact as recorded after the step (`run_id`, `step_id`) that wrote it."""

    id: int
    run_id: str
    step_id: str
    name: str
    type: str
    path: str
    sha256: str
    size: int
    metadata: dict[str, Any]
    created: float

    @property
    def key(self) -> str:
        return f"artifact:{self.id}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class Metric:
    step_id: str
    name: str
    value: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class Registration:
    """Step (`run_id`, `step_id`) registered `artifact_id` (None: not an artifact the store knows)
    as the registry version `registry_uri` (registry://NAME/VERSION)."""

    id: int
    run_id: str
    step_id: str
    artifact_id: int | None
    registry_uri: str
    time: float

    @property
    def key(self) -> str:
        return f"registration:{self.id}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class RunView:
    """Everything recorded about one run. `artifacts`: its steps' outputs (reused ones included:
    their `run_id` is the run that wrote them)."""

    run: RunSummary
    params: dict[str, Any]
    spec: dict[str, Any]
    steps: tuple[StepRow, ...]
    artifacts: tuple[ArtifactRow, ...]
    metrics: tuple[Metric, ...]
    registrations: tuple[Registration, ...]

    def step(self, step_id: str) -> StepRow:
        return next(s for s in self.steps if s.step_id == step_id)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run.as_dict(),
            "params": self.params,
            "spec": self.spec,
            "steps": [s.as_dict() for s in self.steps],
            "artifacts": [a.as_dict() for a in self.artifacts],
            "metrics": [m.as_dict() for m in self.metrics],
            "registrations": [r.as_dict() for r in self.registrations],
        }


# -- errors ---------------------------------------------------------------------------------------


class MetadataError(Exception):
    """The metadata store cannot do what was asked (bad database URL, bad argument, ...)."""


class NotFound(MetadataError, LookupError):
    """No run, step, artifact or registration matches."""


class RunNotFound(NotFound):
    """No run has this id, nor an id starting with it."""


class Ambiguous(MetadataError, LookupError):
    """A run id or sha256 prefix matches more than one."""


# -- lineage --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Edge:
    """`source` -> `target` (node keys), the way data flows. kind:

    produced: step -> an artifact it wrote, or, for a cached step, reused;
    consumed: artifact -> a step that read it;
    registered: step -> the registration it made, and artifact -> registration when that step
    registered an artifact it did not consume (its own output);
    cached: an execution -> a cached step that reused its outputs.
    """

    source: str
    kind: str
    target: str


def walk(starts: Iterable[str], expand: Callable[[str], Iterable[Edge]]) -> list[Edge]:
    """Every edge reachable from `starts` through `expand`, each once, in the order found."""
    queue = deque(starts)
    seen = set(queue)
    edges: dict[Edge, None] = {}
    while queue:
        for edge in expand(queue.popleft()):
            edges.setdefault(edge)
            for end in (edge.source, edge.target):
                if end not in seen:
                    seen.add(end)
                    queue.append(end)
    return list(edges)


_RELATIONS = {
    "upstream": {
        "produced": "written by",
        "consumed": "input",
        "registered": "registered from",
        "cached": "reused from",
    },
    "downstream": {
        "produced": "output",
        "consumed": "read by",
        "registered": "registered as",
        "cached": "reused by",
    },
}


@dataclass(frozen=True, slots=True)
class Lineage:
    """A lineage graph. direction: "upstream" (`lineage`) or "downstream" (`descendants`); roots:
    the keys of the nodes `target` named; steps, artifacts, registrations: every node reached;
    runs: the runs of those steps, oldest first; edges: between node keys (see `Edge`)."""

    target: str
    direction: str
    roots: tuple[str, ...]
    runs: tuple[RunSummary, ...]
    steps: tuple[StepRow, ...]
    artifacts: tuple[ArtifactRow, ...]
    registrations: tuple[Registration, ...]
    edges: tuple[Edge, ...]

    def node(self, key: str) -> StepRow | ArtifactRow | Registration:
        return self._nodes()[key]

    def _nodes(self) -> dict[str, StepRow | ArtifactRow | Registration]:
        return {n.key: n for n in (*self.steps, *self.artifacts, *self.registrations)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "direction": self.direction,
            "roots": list(self.roots),
            "runs": [r.as_dict() for r in self.runs],
            "steps": [s.as_dict() for s in self.steps],
            "artifacts": [a.as_dict() for a in self.artifacts],
            "registrations": [r.as_dict() for r in self.registrations],
            "edges": [{"source": e.source, "kind": e.kind, "target": e.target} for e in self.edges],
        }

    def tree(self) -> list[str]:
        """The graph as text lines: each root, then what it came from (upstream) or led to
        (downstream), indented; a node met again says "(see above)" instead of repeating its
        subtree. Then the runs involved."""
        nodes = self._nodes()
        upstream = self.direction == "upstream"
        children: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for e in self.edges:
            parent, child = (e.target, e.source) if upstream else (e.source, e.target)
            children[parent].append((e.kind, child))
        relations = _RELATIONS[self.direction]
        lines = [f"{self.direction} of {self.target}:"]
        shown: set[str] = set()

        def visit(key: str, kind: str | None, prefix: str, branch: str) -> None:
            relation = f"{relations[kind]} " if kind else ""
            text = f"{prefix}{branch}{relation}{_label(nodes[key])}"
            if key in shown:
                lines.append(f"{text}  (see above)")
                return
            shown.add(key)
            lines.append(text)
            below = prefix + ("    " if branch == "└── " else "│   " if branch else "")
            kids = children.get(key, [])
            for i, (child_kind, child) in enumerate(kids):
                visit(child, child_kind, below, "└── " if i == len(kids) - 1 else "├── ")

        for root in self.roots:
            if root not in shown:
                visit(root, None, "", "")
        if self.runs:
            lines.append("runs:")
            lines += [f"  {_run_line(r)}" for r in self.runs]
        return lines


def _label(node: StepRow | ArtifactRow | Registration) -> str:
    if isinstance(node, StepRow):
        reusing = f", reusing {'/'.join(node.cached_from)}" if node.cached_from else ""
        return f"step {node.step_id} ({node.component}) {node.status}{reusing} in run {node.run_id}"
    if isinstance(node, ArtifactRow):
        return f"{node.type} {node.name} #{node.id} sha256:{node.sha256[:12]} {node.path}"
    return f"{node.registry_uri} (registered by {node.run_id}/{node.step_id})"


def _run_line(run: RunSummary) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started))
    return f"{run.id}  {run.pipeline}  {run.status}  started {started}  ({run.executor})"
