"""What canary analysis reads from the data plane: for each revision under analysis, its requests,
failures and latencies since its window began, and for a canary taking mirrored requests, how many
of its answers agreed with the answer the client got. The controller opens a window per revision
when a rollout stage starts and reads it at every look; revisions nobody watches cost one dict
lookup per request.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

__all__ = ["LATENCY_SAMPLES", "RevisionSamples", "Window"]

#: latencies kept per window (a uniform sample of them past that: reservoir sampling).
LATENCY_SAMPLES = 10_000


@dataclass(slots=True)
class Window:
    """One revision's requests since the window opened. `compare`: mirrored answers are compared
    with the client's (`tolerance`: None compares classes)."""

    compare: bool = False
    tolerance: float | None = None
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    agreed: int = 0
    compared: int = 0
    #: why answers could not be compared (the last reason), if they could not.
    problem: str | None = None

    def copy(self) -> Window:
        return replace(self, latencies_ms=list(self.latencies_ms))


class RevisionSamples:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._windows: dict[str, Window] = {}
        self._rng = rng or random.Random()

    def open(self, revision: str, *, compare: bool = False, tolerance: float | None = None) -> None:
        """Start (or restart) `revision`'s window."""
        self._windows[revision] = Window(compare, tolerance)

    def close(self, revision: str) -> None:
        self._windows.pop(revision, None)

    def watched(self) -> set[str]:
        return set(self._windows)

    def window(self, revision: str) -> Window | None:
        """A copy of `revision`'s window so far."""
        found = self._windows.get(revision)
        return found.copy() if found is not None else None

    def compares(self, revision: str) -> Window | None:
        """The window of `revision` when its mirrored answers are compared."""
        found = self._windows.get(revision)
        return found if found is not None and found.compare else None

    def record(self, revision: str, ok: bool, seconds: float) -> None:
        window = self._windows.get(revision)
        if window is None:
            return
        window.requests += 1
        window.errors += not ok
        latency = seconds * 1000.0
        if len(window.latencies_ms) < LATENCY_SAMPLES:
            window.latencies_ms.append(latency)
        elif (slot := self._rng.randrange(window.requests)) < LATENCY_SAMPLES:
            window.latencies_ms[slot] = latency

    def record_agreement(self, revision: str, agreed: int, compared: int) -> None:
        if (window := self._windows.get(revision)) is not None:
            window.agreed += agreed
            window.compared += compared

    def record_problem(self, revision: str, problem: str) -> None:
        if (window := self._windows.get(revision)) is not None:
            window.problem = problem
