"""The rollout policy, pure: from a component's revisions, which of them are ready, its rollout
pointers and `canaryTrafficPercent`, decide the pointers and the traffic split (KServe's rules).

- The first revision to become ready is rolled out with 100%.
- A newer ready revision without `canaryTrafficPercent` (or with 100) is rolled out at once; the
  old one becomes `previousRolledoutRevision`. Until it is ready, traffic stays where it was.
- With `canaryTrafficPercent: P`, the newest ready revision gets P% and the rolled-out one the rest,
  until `promote` rolls it out.
- `rollback` withdraws a canary in progress, or else pins 100% to the previous rolled-out revision;
  newer revisions get nothing until the spec changes again (a new revision clears the pin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from serving.store import Rollout

__all__ = ["Plan", "canary", "plan", "promote", "rollback"]


@dataclass(frozen=True, slots=True)
class Plan:
    rollout: Rollout
    #: configured traffic: (revision, percent), percent > 0, summing to 100 (empty: nothing ready yet).
    traffic: tuple[tuple[str, int], ...]
    #: the newest revision that is ready (KServe's latestReadyRevision).
    latest_ready: str | None
    #: human-readable changes, for events.
    changes: tuple[str, ...] = ()


def plan(revisions: Sequence[str], ready: set[str], rollout: Rollout, canary_percent: int | None) -> Plan:
    """`revisions` oldest first."""
    latest_ready = next((r for r in reversed(revisions) if r in ready), None)
    changes: list[str] = []
    if rollout.latest is None or rollout.latest not in revisions:
        if latest_ready is None:
            return Plan(rollout, (), None)
        rollout = Rollout(latest=latest_ready)
        changes.append(f"revision {latest_ready} rolled out (100%)")
        return Plan(rollout, ((latest_ready, 100),), latest_ready, tuple(changes))

    if canary(revisions, ready, rollout) is None:
        return Plan(rollout, ((rollout.latest, 100),), latest_ready, ())
    assert latest_ready is not None
    if canary_percent is None or canary_percent >= 100:
        changes.append(f"revision {latest_ready} rolled out (100%), replacing {rollout.latest}")
        rollout = Rollout(latest=latest_ready, previous=rollout.latest)
        return Plan(rollout, ((latest_ready, 100),), latest_ready, tuple(changes))
    traffic = ((rollout.latest, 100 - canary_percent), (latest_ready, canary_percent))
    return Plan(rollout, tuple((r, p) for r, p in traffic if p > 0), latest_ready, ())


def canary(revisions: Sequence[str], ready: set[str], rollout: Rollout) -> str | None:
    """The revision a canary split would give traffic to: the newest ready one, newer than the
    rolled-out revision, unless a rollback pinned the traffic. `revisions` oldest first."""
    latest_ready = next((r for r in reversed(revisions) if r in ready), None)
    if latest_ready is None or rollout.latest not in revisions or rollout.pinned:
        return None
    return latest_ready if revisions.index(latest_ready) > revisions.index(rollout.latest) else None


def promote(rollout: Rollout, latest_ready: str | None) -> Rollout:
    """Move 100% to the newest ready revision (the canary)."""
    if latest_ready is None:
        raise ValueError("no revision is ready to promote")
    if latest_ready == rollout.latest:
        if rollout.pinned:
            return replace(rollout, pinned=False)
        raise ValueError(f"revision {latest_ready} already takes all traffic")
    return Rollout(latest=latest_ready, previous=rollout.latest)


def rollback(rollout: Rollout, canary: str | None = None) -> Rollout:
    """Withdraw the canary (`canary`: the revision taking canary traffic, if any), keeping 100% on the
    rolled-out revision; without a canary, pin 100% to the previous rolled-out revision."""
    if canary is not None and canary != rollout.latest and not rollout.pinned:
        return replace(rollout, pinned=True)
    if rollout.previous is None:
        raise ValueError("there is no previous rolled-out revision to roll back to")
    return Rollout(latest=rollout.previous, previous=rollout.latest, pinned=True)
