"""The pipeline module's shared vocabulary: artifact types, the compiled pipeline (steps, their
inputs and conditions), and what running a step gives back.

A pipeline is compiled (`dsl.compile_pipeline`) into a `PipelineSpec`: plain frozen dataclasses an
executor can run without the user's code in scope (steps name their component by module file and
function name, so a worker process or a Ray task imports it itself).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from serving.comparisons import COMPARISONS

__all__ = [
    "Artifact",
    "ArtifactRef",
    "Const",
    "Dataset",
    "Input",
    "Metrics",
    "Model",
    "Output",
    "OutputRef",
    "PipelineError",
    "PipelineSpec",
    "Predicate",
    "Problem",
    "Resources",
    "StepResult",
    "StepSpec",
    "StepStatus",
]


# -- artifacts ------------------------------------------------------------------------------------


class Artifact:
    """A file (or folder) one step writes and later steps read, with metadata.

    `path`: where the producing step writes it and consumers read it (a local path; the executor
    chooses it). `metadata`: free-form JSON-able facts (rows, columns, framework, ...), recorded
    in the metadata store. After the step, the executor records the artifact's sha256.
    """

    type_name: ClassVar[str] = "Artifact"

    def __init__(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.metadata: dict[str, Any] = dict(metadata or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class Dataset(Artifact):
    type_name = "Dataset"


class Model(Artifact):
    type_name = "Model"


class Metrics(Artifact):
    """Named scalar metrics; `log_metric` records one (kept in `metadata` and written to `path`)."""

    type_name = "Metrics"

    def log_metric(self, name: str, value: float) -> None:
        self.metadata[name] = float(value)


A = TypeVar("A", bound=Artifact)


class Input(Generic[A]):
    """Annotation: `data: Input[Dataset]` is an artifact this component reads."""


class Output(Generic[A]):
    """Annotation: `model: Output[Model]` is an artifact this component writes (to `model.path`)."""


# -- the compiled pipeline ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Const:
    """A literal parameter value (JSON-able)."""

    value: Any


@dataclass(frozen=True, slots=True)
class OutputRef:
    """A parameter output of an upstream step: its return value (`name` "output") or one field of a
    NamedTuple return."""

    step: str
    name: str = "output"


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    """An artifact output of an upstream step."""

    step: str
    name: str


@dataclass(frozen=True, slots=True)
class Predicate:
    """A step's run condition: `left op right`, evaluated once `left`'s step has finished."""

    left: OutputRef
    op: str  # == != < <= > >=
    right: Any

    def holds(self, value: Any) -> bool:
        return COMPARISONS[self.op](value, self.right)


@dataclass(frozen=True, slots=True)
class Resources:
    """What a step asks of the node it runs on (`Task.set_cpu_limit`, ...): the Ray executor
    schedules its task by it; the local executor ignores it. None or empty: no ask."""

    cpus: float | None = None
    memory_bytes: int | None = None
    #: GPUs (KFP's accelerator limit).
    accelerators: int | None = None
    #: node label -> value the node must carry (KFP's node selector; Ray's label selector).
    node_selector: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The asks that are set, as plain JSON (an empty dict for none)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and v != {}}


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step: a component called with parameters and artifacts.

    id: unique in the pipeline (the component name, suffixed `-2`, `-3`... for later calls).
    module_file/function: where the component lives (a module-level name in that file).
    params: parameter name -> Const | OutputRef (an upstream parameter output) | list of them
    (a fan-in over a ParallelFor). artifacts: input name -> ArtifactRef | list of them.
    outputs: output artifact name -> type name. conditions: all must hold for the step to run.
    """

    id: str
    component: str
    module_file: str
    function: str
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    conditions: tuple[Predicate, ...] = ()
    retries: int = 0
    timeout_s: float | None = None
    cache: bool = True
    #: sha256 of the component's source: part of the cache key, so edited code runs again.
    code_hash: str = ""
    #: steps this one runs after without taking anything from them (`task.after(other)`).
    after: tuple[str, ...] = ()
    #: where it may run (Ray); not part of the cache key: placement does not change outputs.
    resources: Resources = field(default_factory=Resources)

    def upstream(self) -> set[str]:
        """The steps this one waits for."""
        refs: list[Any] = [*self.params.values(), *self.artifacts.values()]
        found = {c.left.step for c in self.conditions} | set(self.after)
        while refs:
            ref = refs.pop()
            if isinstance(ref, list | tuple):
                refs.extend(ref)
            elif isinstance(ref, OutputRef | ArtifactRef):
                found.add(ref.step)
        return found


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    """A compiled pipeline: its name, the parameters it was compiled with, and its steps in a
    topological order (every step after the steps it waits for)."""

    name: str
    params: dict[str, Any]
    steps: tuple[StepSpec, ...]

    def step(self, step_id: str) -> StepSpec:
        return next(s for s in self.steps if s.id == step_id)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- problems -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong, and where: `step train: input 'data'`, `pipeline parameter 'lr'`, ..."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class PipelineError(Exception):
    """The pipeline cannot run as written; raised before any step runs, with every problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


# -- running --------------------------------------------------------------------------------------


class StepStatus:
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    CACHED = "CACHED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"  # a condition did not hold, or an upstream step failed or was skipped
    DONE = frozenset({SUCCEEDED, CACHED})


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step left behind: its parameter outputs, its artifacts (name -> path, metadata),
    and how it went."""

    step: str
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 1
    started: float = 0.0
    finished: float = 0.0
    log_path: str | None = None
