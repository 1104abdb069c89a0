"""Run one pipeline step: import its component from the pipeline's file, hand it its parameters and
artifacts, and report what it returned and wrote. The same function runs in a local worker process
(`python -m serving.pipelines.worker INVOCATION RESULT`) and in a Ray task, so both executors
give identical results.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from serving.modules import exec_file
from serving.pipelines import context
from serving.pipelines.types import Artifact, Dataset, Metrics, Model

__all__ = ["Invocation", "StepError", "import_file", "outcome", "run_step"]

_BUILTIN = {cls.type_name: cls for cls in (Artifact, Dataset, Model, Metrics)}


@dataclass(frozen=True, slots=True)
class Invocation:
    """Everything one step needs, as plain JSON: what to call, with what, and where to write.

    inputs: name -> {"type", "path", "metadata"} (or a list of them, for a fan-in).
    outputs: name -> {"type", "path"}: where each output artifact goes.
    resources: what the step asks of its node (`Resources.as_dict()`); only the Ray executor uses it.
    """

    run_id: str
    step_id: str
    module_file: str
    function: str
    params: dict[str, Any]
    inputs: dict[str, Any]
    outputs: dict[str, dict[str, str]]
    log_path: str
    attempt: int = 1
    env: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Invocation:
        return cls(**json.loads(text))


class StepError(Exception):
    """The component raised; `details` is its traceback."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def import_file(path: Path) -> ModuleType:
    """Import a Python file by path (once per process); its folder goes on sys.path for its imports."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    # Under its own name when free, so what it defines pickles by reference into processes it
    # spawns (data-parallel training workers find it on the inherited sys.path).
    name = path.stem
    known = sys.modules.get(name)
    if known is not None and Path(getattr(known, "__file__", "") or "").resolve() == path:
        return known
    if known is not None or not name.isidentifier():
        name = "servegate_pipeline_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        if name in sys.modules:
            return sys.modules[name]
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    return exec_file(name, path)


@contextlib.contextmanager
def _logging_to(path: str) -> Iterator[None]:
    """The step's stdout and stderr (its subprocesses' too) go to its log file while it runs."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _artifact(spec: dict[str, Any], module: ModuleType) -> Artifact:
    cls = _BUILTIN.get(spec["type"]) or getattr(module, spec["type"], Artifact)
    return cls(spec["path"], spec.get("metadata"))


def run_step(inv: Invocation) -> dict[str, Any]:
    """Call the step's component; returns {"params": ..., "artifacts": {name: {"path", "metadata"}},
    "registrations": [...]}. Raises StepError (with the traceback) when the component raises."""
    with _logging_to(inv.log_path), _environment(inv.env):
        print(f"--- step {inv.step_id} of run {inv.run_id}, attempt {inv.attempt}", flush=True)
        module = import_file(Path(inv.module_file))
        comp = getattr(module, inv.function)
        func = getattr(comp, "python_func", comp)
        kwargs: dict[str, Any] = dict(inv.params)
        for name, spec in inv.inputs.items():
            kwargs[name] = (
                [_artifact(s, module) for s in spec] if isinstance(spec, list) else _artifact(spec, module)
            )
        outputs = {}
        for name, spec in inv.outputs.items():
            Path(spec["path"]).parent.mkdir(parents=True, exist_ok=True)
            outputs[name] = kwargs[name] = _artifact(spec, module)
        with context.running(inv.run_id, inv.step_id, kwargs) as ctx:
            try:
                returned = func(**kwargs)
            except BaseException as exc:
                details = traceback.format_exc()
                print(details, file=sys.stderr, flush=True)
                raise StepError(f"{type(exc).__name__}: {exc}", details) from None
        for artifact in outputs.values():
            if isinstance(artifact, Metrics) and not artifact.path.exists():
                artifact.path.write_text(json.dumps(artifact.metadata, indent=2))
        params = _returned(returned)
        print(f"--- step {inv.step_id} done", flush=True)
    return {
        "params": params,
        "artifacts": {n: {"path": str(a.path), "metadata": a.metadata} for n, a in outputs.items()},
        "registrations": ctx.registrations,
    }


def _returned(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        out = dict(zip(value._fields, value, strict=True))
    else:
        out = {"output": value}
    try:
        json.dumps(out)
    except (TypeError, ValueError) as exc:
        raise StepError(f"the component returned something that is not JSON: {exc}") from None
    return out


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def outcome(inv: Invocation) -> dict[str, Any]:
    """`run_step` as the executors report it: `{"ok": True, **its result}`, or `{"ok": False,
    "error", "details"}` when the component, its import or its arguments failed."""
    try:
        return {"ok": True, **run_step(inv)}
    except StepError as exc:
        return {"ok": False, "error": str(exc), "details": exc.details}
    except BaseException as exc:  # the import or the arguments failed: report it like a step error
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "details": traceback.format_exc()}


def main(argv: list[str]) -> int:
    """`python -m serving.pipelines.worker INVOCATION.json RESULT.json` (what the local executor runs)."""
    invocation_path, result_path = Path(argv[0]), Path(argv[1])
    result = outcome(Invocation.from_json(invocation_path.read_text()))
    result_path.write_text(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
