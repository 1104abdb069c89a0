"""Pure multi-model placement: which replica takes a model it does not hold yet, and which models
that replica unloads (least recently used first) to stay within its budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Budget", "evictions", "pick_host"]


@dataclass(frozen=True, slots=True)
class Budget:
    """max_models: models one replica may hold (0: no limit). memory_bytes: their summed `memory`
    (the TrainedModels' declared sizes) one replica may hold (None: no limit)."""

    max_models: int = 0
    memory_bytes: int | None = None


def pick_host(candidates: Sequence[tuple[str, int, int]]) -> str:
    """Of (replica id, models held, outstanding requests), the replica holding fewest models, then
    the least busy: spreading models keeps every replica's working set small."""
    return min(candidates, key=lambda c: (c[1], c[2], c[0]))[0]


def evictions(held_lru: Sequence[str], sizes: Mapping[str, int], budget: Budget, incoming: str) -> list[str]:
    """Models to unload (oldest use first) so that `incoming` fits beside the rest.

    `held_lru` lists what the replica holds, least recently used first. Nothing is evicted for a
    model that could never fit on its own; the load then fails on the replica, not here.
    """
    kept = [m for m in held_lru if m != incoming]
    out: list[str] = []
    if budget.memory_bytes is not None and sizes.get(incoming, 0) > budget.memory_bytes:
        return out

    def over() -> bool:
        count = len(kept) + 1
        if budget.max_models and count > budget.max_models:
            return True
        if budget.memory_bytes is not None:
            used = sum(sizes.get(m, 0) for m in kept) + sizes.get(incoming, 0)
            return used > budget.memory_bytes
        return False

    while kept and over():
        out.append(kept.pop(0))
    return out
