"""What a running step may ask about itself: its run and step ids, and a way to say "I registered
this artifact as a registry version", which the executor records for lineage.

    from serving.pipelines import context
    step = context.current()
    version = registry.register("digits", str(model.path), run=step.run_id)
    step.registered(version.uri, artifact=model)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from serving.pipelines.types import Artifact

__all__ = ["StepContext", "current", "running"]


@dataclass
class StepContext:
    run_id: str
    step_id: str
    #: the step's arguments by name (artifacts included), to name an artifact by object.
    arguments: dict[str, Any] = field(default_factory=dict)
    registrations: list[dict[str, str | None]] = field(default_factory=list)

    def registered(self, registry_uri: str, artifact: Artifact | None = None) -> None:
        """Record that this step registered `artifact` (one of its inputs or outputs) as `registry_uri`."""
        name = next((n for n, v in self.arguments.items() if v is artifact), None) if artifact else None
        self.registrations.append({"uri": registry_uri, "artifact": name})


_current: StepContext | None = None


def current() -> StepContext:
    """The step running in this process; RuntimeError outside a pipeline step."""
    if _current is None:
        raise RuntimeError("not inside a running pipeline step")
    return _current


@contextlib.contextmanager
def running(run_id: str, step_id: str, arguments: dict[str, Any]) -> Iterator[StepContext]:
    global _current
    previous, _current = _current, StepContext(run_id, step_id, arguments)
    try:
        yield _current
    finally:
        _current = previous
