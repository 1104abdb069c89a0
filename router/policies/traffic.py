"""Pure traffic policies: weighted choice (canary, splitter), sticky variant assignment (A/B), and the
shadow coin and room. No I/O, no clocks: randomness comes in as a number, so tests can table the outcomes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["effective_weights", "pick_weighted", "shadow_has_room", "sticky_point", "take_shadow"]

#: requests a shadow's replica may hold before mirrored copies are dropped rather than queued.
SHADOW_DEPTH = 2

T = TypeVar("T")


def pick_weighted(items: Sequence[tuple[T, int]], point: float) -> T | None:
    """The item whose cumulative-weight interval holds `point` (in [0, 1)); None if all weights are 0."""
    total = sum(weight for _, weight in items)
    if total <= 0:
        return None
    target = point * total
    running = 0
    for item, weight in items:
        running += weight
        if target < running:
            return item
    return next(item for item, weight in reversed(items) if weight > 0)


def sticky_point(key: str, salt: str = "") -> float:
    """A stable point in [0, 1) for `key`: the same user lands on the same variant on every request,
    on every gateway, across restarts (unlike Python's salted `hash`)."""
    digest = hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def effective_weights(configured: Sequence[tuple[T, int]], ready: set[T]) -> list[tuple[T, int]]:
    """Configured weights restricted to ready targets, scaled back to 100.

    An unready or failing revision gets no traffic: its share goes to the others in proportion.
    Nothing ready gives an empty list.
    """
    kept = [(item, weight) for item, weight in configured if item in ready and weight > 0]
    total = sum(weight for _, weight in kept)
    if total <= 0:
        return []
    scaled = [(item, weight * 100 / total) for item, weight in kept]
    # Integer percentages that still add up to 100 (largest remainders).
    floors = [(item, int(w)) for item, w in scaled]
    short = 100 - sum(w for _, w in floors)
    order = sorted(range(len(scaled)), key=lambda i: scaled[i][1] - floors[i][1], reverse=True)
    for i in order[:short]:
        floors[i] = (floors[i][0], floors[i][1] + 1)
    return floors


def take_shadow(percent: int, point: float) -> bool:
    """Whether this request is mirrored, for a shadow taking `percent` of traffic (`point` in [0, 1))."""
    return point * 100 < percent


def shadow_has_room(replicas: int, waiting: int) -> bool:
    """Whether a mirrored copy may go to a shadow with `replicas` ready replicas and `waiting`
    requests sent to it and not yet answered (queued in front of it too). Copies use only spare room:
    queued behind one another they would delay the shadow's own answers, and when a rollout's canary
    goes live right after its shadow phase, its first live requests would wait behind them (and be
    judged slow). A shadow with no replica (scaling from zero) may take a copy or two: they wake it.
    """
    return waiting < max(1, replicas) * SHADOW_DEPTH
