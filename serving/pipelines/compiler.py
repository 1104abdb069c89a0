"""Compile a pipeline: call its function with concrete parameters to record the DAG, then check it
before anything runs (missing or unknown arguments, type mismatches between an output and the input
it feeds, cycles made with `task.after`, a component not defined at module level) and order its
steps. Every problem is reported at once (`PipelineError`), naming the step and field.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from serving.bounds import loads_json
from serving.pipelines.dsl import (
    ArtifactHandle,
    Builder,
    ParamHandle,
    Pipeline,
    Task,
    param_type,
)
from serving.pipelines.types import (
    Artifact,
    ArtifactRef,
    Const,
    OutputRef,
    PipelineError,
    PipelineSpec,
    Problem,
    Resources,
    StepSpec,
)
from serving.spec.common import is_label_key, is_label_value, parse_quantity

__all__ = ["coerce_params", "compile_pipeline", "load_pipeline"]


def coerce_params(pipe: Pipeline, raw: dict[str, str]) -> dict[str, Any]:
    """Command-line `--param k=v` strings as the pipeline's annotated types (JSON for list/dict,
    true/false for bool). Raises PipelineError naming each bad one."""
    out, problems = {}, []
    for key, text in raw.items():
        if key not in pipe.parameters:
            problems.append(
                Problem(f"pipeline parameter '{key}'", f"unknown; {pipe.name} takes {_names(pipe)}")
            )
            continue
        kind = param_type(pipe.hints.get(key, Any)) or object
        try:
            out[key] = _coerce(text, kind)
        except ValueError as exc:
            problems.append(Problem(f"pipeline parameter '{key}'", str(exc)))
    if problems:
        raise PipelineError(problems)
    return out


def _names(pipe: Pipeline) -> str:
    return ", ".join(pipe.parameters) or "no parameters"


def _coerce(text: str, kind: type) -> Any:
    if kind is str:
        return text
    if kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"'{text}' is not true or false")
    try:
        value = loads_json(text)  # past a bound: BoundsError (a ValueError) names the limit
    except json.JSONDecodeError:
        if kind is object:
            return text
        raise ValueError(f"'{text}' is not a {kind.__name__}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is not object and not isinstance(value, kind):
        raise ValueError(f"'{text}' is not a {kind.__name__}")
    return value


def compile_pipeline(pipe: Pipeline, params: dict[str, Any] | None = None) -> PipelineSpec:
    """Build the DAG with these parameter values and check it; raises PipelineError with every problem."""
    params = dict(params or {})
    problems = [
        Problem(f"pipeline parameter '{k}'", f"unknown; {pipe.name} takes {_names(pipe)}")
        for k in params
        if k not in pipe.parameters
    ]
    for name, p in pipe.parameters.items():
        if name not in params and p.default is p.empty:
            problems.append(Problem(f"pipeline parameter '{name}'", "missing (no default): pass --param"))
        elif name not in params:
            params[name] = p.default
    if problems:
        raise PipelineError(problems)
    builder = Builder()
    with builder.active():
        pipe.python_func(**params)
    if not builder.tasks:
        raise PipelineError([Problem(f"pipeline {pipe.name}", "has no steps")])
    steps = [_step(task, problems) for task in builder.tasks]
    problems += _cycles(steps)
    if problems:
        raise PipelineError(problems)
    return PipelineSpec(pipe.name, {k: params[k] for k in pipe.parameters}, tuple(_topological(steps)))


def _step(task: Task, problems: list[Problem]) -> StepSpec:
    comp, sig = task.component, task.component.signature
    where = f"step {task.id}"
    func = comp.python_func
    if "<locals>" in func.__qualname__:
        problems.append(
            Problem(where, f"component {comp.name} must be defined at module level (a worker imports it)")
        )
    params: dict[str, Any] = {}
    artifacts: dict[str, Any] = {}
    for name, value in task.args.items():
        if name in sig.params:
            params[name] = _param_arg(value, sig.params[name], f"{where}: parameter '{name}'", problems)
        elif name in sig.inputs:
            artifacts[name] = _artifact_arg(value, sig.inputs[name], f"{where}: input '{name}'", problems)
        elif name in sig.outputs:
            problems.append(Problem(f"{where}: '{name}'", "is an output; the executor supplies it"))
        else:
            known = ", ".join([*sig.params, *sig.inputs]) or "nothing"
            problems.append(Problem(f"{where}: '{name}'", f"unknown argument; {comp.name} takes {known}"))
    for name in sig.params:
        if name not in params and name not in sig.defaults:
            problems.append(Problem(f"{where}: parameter '{name}'", "missing (no default)"))
        elif name not in params:
            params[name] = Const(sig.defaults[name])
    for name in sig.inputs:
        if name not in artifacts:
            problems.append(
                Problem(f"{where}: input '{name}'", "missing: pass an upstream step's output artifact")
            )
    try:
        module_file = str(Path(inspect.getsourcefile(func) or "").resolve())
    except TypeError:
        module_file = ""
    return StepSpec(
        id=task.id,
        component=comp.name,
        module_file=module_file,
        function=func.__name__,
        params=params,
        artifacts=artifacts,
        outputs={n: t.type_name for n, t in sig.outputs.items()},
        conditions=task.conditions,
        retries=task.retries,
        timeout_s=task.timeout_s,
        cache=task.cache,
        code_hash=comp.code_hash,
        after=tuple(task.after_ids),
        resources=_resources(task, where, problems),
    )


def _resources(task: Task, where: str, problems: list[Problem]) -> Resources:
    """The task's placement asks, checked: positive CPUs and memory, a whole number of GPUs, node
    labels in Kubernetes' syntax."""

    def quantity(value: Any, what: str) -> float | None:
        if value is None:
            return None
        try:
            number = parse_quantity(value)
        except ValueError as exc:
            problems.append(Problem(f"{where}: {what}", str(exc)))
            return None
        if number <= 0:
            problems.append(Problem(f"{where}: {what}", f"must be more than 0, given {value!r}"))
            return None
        return number

    cpus = quantity(task.cpu_limit, "cpu limit")
    memory = quantity(task.memory_limit, "memory limit")
    if memory is not None and memory < 1:
        problems.append(Problem(f"{where}: memory limit", f"is less than a byte: {task.memory_limit!r}"))
        memory = None
    gpus = task.accelerator_limit
    if gpus is not None:
        text = str(gpus).strip()
        if isinstance(gpus, bool) or not text.isdigit():
            problems.append(
                Problem(f"{where}: accelerator limit", f"takes a whole number of GPUs, given {gpus!r}")
            )
            gpus = None
        else:
            gpus = int(text)
    # Kubernetes' label syntax (Ray's node labels share it); a value is never empty: only equality
    # is asked for, and Ray reads `!v` or `in(v, w)` as operators.
    for label, value in task.node_selector.items():
        if not is_label_key(label):
            problems.append(Problem(f"{where}: node selector", f"{label!r} is not a node label name"))
        if not is_label_value(value):
            problems.append(
                Problem(
                    f"{where}: node selector {label}",
                    f"{value!r} is not a label value (letters, digits, '-', '_', '.'; up to 63)",
                )
            )
    return Resources(
        cpus=cpus,
        memory_bytes=int(memory) if memory is not None else None,
        accelerators=gpus,
        node_selector=dict(task.node_selector),
    )


def _param_arg(value: Any, kind: type, where: str, problems: list[Problem]) -> Any:
    if isinstance(value, list) and any(isinstance(v, ParamHandle) for v in value):
        if kind not in (list, object):  # fan-in of outputs is a list
            problems.append(Problem(where, f"takes {kind.__name__}, given a list of step outputs"))
        return [_param_arg(v, object, where, problems) for v in value]
    if isinstance(value, ArtifactHandle):
        problems.append(
            Problem(
                where, f"is a parameter ({kind.__name__}), given artifact '{value.name}' of step {value.step}"
            )
        )
        return Const(None)
    if isinstance(value, ParamHandle):
        if not _compatible(value.type, kind):
            problems.append(
                Problem(
                    where,
                    f"takes {kind.__name__}, but step {value.step} output '{value.name}' "
                    f"is {value.type.__name__}",
                )
            )
        return OutputRef(value.step, value.name)
    if isinstance(value, Task):
        problems.append(
            Problem(where, f"given the task {value.id} itself: pass {value.id}.output or .outputs['NAME']")
        )
        return Const(None)
    if not _compatible(type(value), kind) or not _json_able(value):
        problems.append(Problem(where, f"takes {kind.__name__}, given {value!r}"))
    return Const(value)


def _artifact_arg(value: Any, kind: type[Artifact], where: str, problems: list[Problem]) -> Any:
    if isinstance(value, list):
        return [_artifact_arg(v, kind, where, problems) for v in value]
    if isinstance(value, Task) and len(value.component.signature.outputs) == 1:
        value = value.output
    if not isinstance(value, ArtifactHandle):
        problems.append(
            Problem(where, f"takes a {kind.type_name} artifact from an upstream step, given {value!r}")
        )
        return ArtifactRef("", "")
    if not issubclass(value.type, kind):
        problems.append(
            Problem(
                where,
                f"takes {kind.type_name}, but step {value.step} output '{value.name}' "
                f"is {value.type.type_name}",
            )
        )
    return ArtifactRef(value.step, value.name)


def _compatible(given: type, wanted: type) -> bool:
    if wanted is object or given is object:
        return True
    if wanted is float and given is int:
        return True
    if given is bool and wanted is not bool:
        return False
    return issubclass(given, wanted)


def _json_able(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _cycles(steps: list[StepSpec]) -> list[Problem]:
    ids = {s.id for s in steps}
    problems = [
        Problem(f"step {s.id}", f"runs after unknown step '{u}'")
        for s in steps
        for u in s.upstream() - ids
        if u
    ]
    if _topological(steps) is None:
        stuck = sorted(_stuck(steps))
        problems.append(Problem(f"steps {', '.join(stuck)}", "form a cycle: each waits for another"))
    return problems


def _stuck(steps: list[StepSpec]) -> set[str]:
    done: set[str] = set()
    ids = {s.id for s in steps}
    progress = True
    while progress:
        progress = False
        for s in steps:
            if s.id not in done and (s.upstream() & ids) <= done:
                done.add(s.id)
                progress = True
    return ids - done


def _topological(steps: list[StepSpec]) -> list[StepSpec] | None:
    """Steps in an order where each follows what it waits for (ties in creation order); None on a cycle."""
    ids = {s.id for s in steps}
    if _stuck(steps):
        return None
    ordered: list[StepSpec] = []
    placed: set[str] = set()
    while len(ordered) < len(steps):
        for s in steps:
            if s.id not in placed and (s.upstream() & ids) <= placed:
                ordered.append(s)
                placed.add(s.id)
                break
    return ordered


def load_pipeline(target: str) -> Pipeline:
    """`FILE.py[:NAME]` -> the pipeline it names (the only one in the file when NAME is left out)."""
    from serving.pipelines.worker import import_file

    path, _, name = target.partition(":") if not Path(target).exists() else (target, "", "")
    module = import_file(Path(path))
    found = {k: v for k, v in vars(module).items() if isinstance(v, Pipeline)}
    if name:
        if name not in found:
            raise PipelineError(
                [Problem(target, f"no pipeline '{name}'; the file has {', '.join(found) or 'none'}")]
            )
        return found[name]
    if len(found) != 1:
        raise PipelineError(
            [
                Problem(
                    target,
                    f"{len(found)} pipelines ({', '.join(found) or 'none'}): name one with {path}:NAME",
                )
            ]
        )
    return next(iter(found.values()))
