"""The pipeline DSL, in the spirit of Kubeflow Pipelines v2: `@component` functions with typed
parameters and artifact inputs/outputs, `@pipeline` functions composing them into a DAG.

    @component
    def train(data: Input[Dataset], lr: float, model: Output[Model]) -> float: ...

    @pipeline
    def digits(lr: float = 0.01):
        data = load_digits()
        scores = [train(data=data.outputs["train"], lr=x).output for x in ParallelFor([lr, lr * 10])]
        best = pick(scores=scores)                      # fan-in: a list of upstream outputs
        with Condition(best.output > 0.9):
            register(model=...).set_retries(2).set_timeout(600)

Calling a component inside a pipeline records a step and returns its `Task`; nothing runs.
`serving.pipelines.compiler` turns a pipeline into the `PipelineSpec` executors run, checking it.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from serving.pipelines.types import (
    Artifact,
    Input,
    Output,
    OutputRef,
    Predicate,
)

__all__ = ["Component", "Condition", "ParallelFor", "Pipeline", "Task", "component", "pipeline"]

#: parameter types a component may take and return (JSON values).
_PARAM_TYPES = (int, float, str, bool, list, dict)


# -- components -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Signature:
    params: dict[str, type]  # name -> int | float | str | bool | list | dict | object (Any)
    defaults: dict[str, Any]
    inputs: dict[str, type[Artifact]]
    outputs: dict[str, type[Artifact]]
    #: parameter outputs: "output" for a plain return, a NamedTuple's fields; name -> type.
    returns: dict[str, type]


def param_type(hint: Any) -> type | None:
    if hint is Any:
        return object
    origin = get_origin(hint) or hint
    if origin in _PARAM_TYPES:
        return origin
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        options = [a for a in get_args(hint) if a is not type(None)]
        return param_type(options[0]) if len(options) == 1 else None
    return None


def _signature(func: Callable[..., Any]) -> _Signature:
    name = func.__name__
    hints = typing.get_type_hints(func)
    params, defaults, inputs, outputs = {}, {}, {}, {}
    for p in inspect.signature(func).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"component {name}: *args and **kwargs are not supported")
        if p.name not in hints:
            raise TypeError(f"component {name}: parameter '{p.name}' needs a type annotation")
        hint = hints[p.name]
        origin = get_origin(hint)
        if origin in (Input, Output):
            (cls,) = get_args(hint)
            (inputs if origin is Input else outputs)[p.name] = cls
            continue
        kind = param_type(hint)
        if kind is None:
            raise TypeError(
                f"component {name}: parameter '{p.name}' has type {hint!r}; use int, float, str, bool, "
                "list, dict, Input[Artifact type] or Output[Artifact type]"
            )
        params[p.name] = kind
        if p.default is not p.empty:
            defaults[p.name] = p.default
    ret = hints.get("return", type(None))
    if ret is type(None):
        returns = {}
    elif isinstance(ret, type) and issubclass(ret, tuple) and hasattr(ret, "_fields"):
        returns = {f: param_type(t) or object for f, t in typing.get_type_hints(ret).items()}
    elif (kind := param_type(ret)) is not None:
        returns = {"output": kind}
    else:
        raise TypeError(
            f"component {name}: return type {ret!r} is not a parameter type (or a NamedTuple of them)"
        )
    return _Signature(params, defaults, inputs, outputs, returns)


class Component:
    """A function that runs as one pipeline step, in its own process (or Ray task).

    Parameters are JSON values; `Input[...]` arguments are artifacts earlier steps wrote;
    `Output[...]` arguments are artifacts this step writes (the executor supplies their paths).
    The return value (a parameter, or a NamedTuple of them) feeds later steps' parameters.
    """

    def __init__(
        self, func: Callable[..., Any], retries: int = 0, timeout_s: float | None = None, cache: bool = True
    ):
        self.python_func = func
        self.name = func.__name__
        self.signature = _signature(func)
        self.retries, self.timeout_s, self.cache = retries, timeout_s, cache
        try:
            source = inspect.getsource(func)
        except OSError:  # no source (an interactive session): the bytecode still tells code apart
            source = func.__code__.co_code.hex()
        self.code_hash = hashlib.sha256(source.encode()).hexdigest()
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __call__(self, **kwargs: Any) -> Task:
        builder = Builder.current()
        if builder is None:
            raise RuntimeError(
                f"component {self.name} was called outside a pipeline: call it inside an @pipeline "
                f"function, or call {self.name}.python_func(...) to run the function itself"
            )
        return builder.add(self, kwargs)

    def __repr__(self) -> str:
        return f"<component {self.name}>"


def component(
    func: Callable[..., Any] | None = None,
    *,
    retries: int = 0,
    timeout_s: float | None = None,
    cache: bool = True,
) -> Any:
    """Make `func` a pipeline component: `@component` or `@component(retries=2, timeout_s=600)`."""
    if func is None:
        return lambda f: Component(f, retries, timeout_s, cache)
    return Component(func, retries, timeout_s, cache)


# -- tasks and the handles they give --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """`task.output > 0.9`: what a Condition holds on."""

    predicate: Predicate


@dataclass(frozen=True, slots=True)
class ParamHandle:
    """A parameter output of a task, to pass to later steps or compare in a Condition."""

    step: str
    name: str
    type: type

    def _compare(self, op: str, other: Any) -> Comparison:
        if isinstance(other, ParamHandle | ArtifactHandle):
            raise TypeError("a Condition compares a step's output with a constant, not with another output")
        return Comparison(Predicate(OutputRef(self.step, self.name), op, other))

    def __eq__(self, other: Any) -> Comparison:  # type: ignore[override]
        return self._compare("==", other)

    def __ne__(self, other: Any) -> Comparison:  # type: ignore[override]
        return self._compare("!=", other)

    def __lt__(self, other: Any) -> Comparison:
        return self._compare("<", other)

    def __le__(self, other: Any) -> Comparison:
        return self._compare("<=", other)

    def __gt__(self, other: Any) -> Comparison:
        return self._compare(">", other)

    def __ge__(self, other: Any) -> Comparison:
        return self._compare(">=", other)


@dataclass(frozen=True, slots=True)
class ArtifactHandle:
    step: str
    name: str
    type: type[Artifact]


class Task:
    """A step in a pipeline being built: its outputs to pass on, and per-step settings."""

    def __init__(
        self, step_id: str, comp: Component, args: dict[str, Any], conditions: tuple[Predicate, ...]
    ):
        self.id = step_id
        self.component = comp
        self.args = args
        self.conditions = conditions
        self.retries, self.timeout_s, self.cache = comp.retries, comp.timeout_s, comp.cache
        self.after_ids: list[str] = []
        # What the step asks of its node, as given: the compiler checks and converts them.
        self.cpu_limit: str | float | None = None
        self.memory_limit: str | int | None = None
        self.accelerator_limit: int | str | None = None
        self.node_selector: dict[str, str] = {}
        sig = comp.signature
        self.outputs: dict[str, ParamHandle | ArtifactHandle] = {
            **{n: ParamHandle(step_id, n, t) for n, t in sig.returns.items()},
            **{n: ArtifactHandle(step_id, n, t) for n, t in sig.outputs.items()},
        }

    @property
    def output(self) -> ParamHandle | ArtifactHandle:
        """The step's return value; for a component that returns nothing, its only output artifact."""
        if "output" in self.outputs:
            return self.outputs["output"]
        if len(self.outputs) != 1:
            names = ", ".join(self.outputs) or "none"
            raise ValueError(
                f"step {self.id} has {len(self.outputs)} outputs ({names}): use .outputs['NAME']"
            )
        return next(iter(self.outputs.values()))

    def set_retries(self, retries: int) -> Task:
        self.retries = retries
        return self

    def set_timeout(self, seconds: float | None) -> Task:
        self.timeout_s = seconds
        return self

    def set_caching(self, enabled: bool) -> Task:
        self.cache = enabled
        return self

    # Placement, with Kubeflow Pipelines' names. The Ray executor schedules the step's task by them;
    # the local executor runs every step on this machine and ignores them, as KFP's local runner does.

    def set_cpu_limit(self, cpu: str | float) -> Task:
        """CPUs the step needs: `2`, `"2"` or `"500m"` (Ray's `num_cpus`; 1 when not set)."""
        self.cpu_limit = cpu
        return self

    def set_memory_limit(self, memory: str | int) -> Task:
        """Memory the step needs: bytes, or a quantity such as `"512Mi"` or `"4G"` (Ray's `memory`)."""
        self.memory_limit = memory
        return self

    def set_accelerator_limit(self, limit: int | str) -> Task:
        """GPUs the step needs (Ray's `num_gpus`)."""
        self.accelerator_limit = limit
        return self

    def add_node_selector_constraint(self, label: str, value: str) -> Task:
        """Run only on a node whose label `label` is `value` (on Ray, a node label such as one
        given by `ray start --labels`; the step fails when no node of the cluster has it)."""
        self.node_selector[label] = value
        return self

    def after(self, *tasks: Task) -> Task:
        """Run after `tasks` even though nothing passes between them."""
        self.after_ids += [t.id for t in tasks]
        return self


class Builder:
    _stack: typing.ClassVar[list[Builder]] = []

    def __init__(self) -> None:
        self.tasks: list[Task] = []
        self.conditions: list[Predicate] = []
        self._counts: dict[str, int] = {}

    @classmethod
    def current(cls) -> Builder | None:
        return cls._stack[-1] if cls._stack else None

    @contextlib.contextmanager
    def active(self) -> Iterator[Builder]:
        self._stack.append(self)
        try:
            yield self
        finally:
            self._stack.pop()

    def add(self, comp: Component, args: dict[str, Any]) -> Task:
        n = self._counts[comp.name] = self._counts.get(comp.name, 0) + 1
        task = Task(comp.name if n == 1 else f"{comp.name}-{n}", comp, args, tuple(self.conditions))
        self.tasks.append(task)
        return task


class Condition:
    """`with Condition(task.output > 0.9):` the steps inside run only when it holds at run time
    (else they, and what depends on them, are SKIPPED)."""

    def __init__(self, comparison: Comparison) -> None:
        if not isinstance(comparison, Comparison):
            raise TypeError(
                "Condition takes a comparison of a step's output with a constant: task.output > 0.9"
            )
        self.predicate = comparison.predicate

    def __enter__(self) -> Condition:
        builder = Builder.current()
        if builder is None:
            raise RuntimeError("Condition is used inside an @pipeline function")
        builder.conditions.append(self.predicate)
        return self

    def __exit__(self, *exc: object) -> None:
        builder = Builder.current()
        assert builder is not None
        builder.conditions.pop()


class ParallelFor:
    """`for item in ParallelFor(items):` fan out: the loop body's steps are made once per item and,
    depending on nothing of each other, run in parallel. Collect their outputs in a list and pass
    it to a later step's `list` parameter to fan in."""

    def __init__(self, items: Iterable[Any]) -> None:
        if isinstance(items, ParamHandle | ArtifactHandle):
            raise TypeError(
                "ParallelFor needs a list known when the pipeline is compiled, not a step's output"
            )
        self.items = list(items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)


# -- pipelines ------------------------------------------------------------------------------------


class Pipeline:
    """A function composing components into a DAG; its parameters are the pipeline's."""

    def __init__(self, func: Callable[..., Any], name: str | None = None) -> None:
        self.python_func = func
        self.name = name or func.__name__
        self.__doc__ = func.__doc__
        self.parameters = inspect.signature(func).parameters
        self.hints = typing.get_type_hints(func)


def pipeline(func: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Make `func` a pipeline: `@pipeline` or `@pipeline(name="digits")`."""
    if func is None:
        return lambda f: Pipeline(f, name)
    return Pipeline(func, name)
