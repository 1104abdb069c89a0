"""Progressive delivery, pure: where a rollout stands (`Progress`), and what the checks' verdicts at
one look make of it (`judge`). The controller persists the progress, sets the traffic it names,
gathers the verdicts (analysis.py) over the current stage's window and acts on the decision.

A rollout walks its stages: the shadow phase if any (mirrored requests only, no live traffic to the
canary), then each live step. At every look the failed checks count against the failure budget; one
more than the budget aborts the rollout (roll back). When a stage's hold is over, its final look
moves on if every check passed; a check still short of samples holds the stage until it has them.
After the last stage the canary is promoted, or waits for a person (`onSuccess: wait`). A canary
that stops being ready aborts the rollout; a person may pause (the stage's clock restarts on
resume) or abort it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from serving.controller.analysis import Verdict
from serving.spec.rollout import RolloutStrategy, duration_s

__all__ = ["Decision", "Progress", "Stage", "abort", "judge", "pause", "resume", "stages", "start"]

State = Literal["running", "paused", "waiting", "succeeded", "aborted"]
#: states that need nothing more from the controller.
DONE = frozenset({"succeeded", "aborted"})


@dataclass(frozen=True, slots=True)
class Stage:
    """`shadow`: `percent` of requests mirrored to the canary; `live`: `percent` of them served by it."""

    kind: Literal["shadow", "live"]
    percent: int
    hold_s: float

    def __str__(self) -> str:
        return f"shadow {self.percent}%" if self.kind == "shadow" else f"{self.percent}% live"


def stages(strategy: RolloutStrategy, canary_percent: int | None) -> tuple[Stage, ...]:
    """The shadow phase (if any), then the live steps."""
    shadow = strategy.shadow
    first = () if shadow is None else (Stage("shadow", shadow.percent, duration_s(shadow.hold)),)
    return first + tuple(Stage("live", w, hold) for w, hold in strategy.weights(canary_percent))


@dataclass(frozen=True, slots=True)
class Progress:
    """A rollout of `canary` against `stable`. `failures`: failed checks counted so far."""

    canary: str
    stable: str
    stage: int
    stage_started: float
    state: State = "running"
    looks: int = 0
    failures: int = 0
    reason: str = ""
    verdicts: tuple[Verdict, ...] = ()

    def traffic(self, plan: Sequence[Stage]) -> tuple[int, int]:
        """(percent of live requests the canary serves, percent mirrored to it)."""
        if self.state in DONE:
            return (0, 0)
        stage = plan[self.stage]
        return (0, stage.percent) if stage.kind == "shadow" else (stage.percent, 0)

    def final_look(self, plan: Sequence[Stage], now: float) -> bool:
        """Whether a look now ends the stage (its hold is over): the checks judge at full confidence."""
        return self.state == "running" and now - self.stage_started >= plan[self.stage].hold_s


@dataclass(frozen=True, slots=True)
class Decision:
    progress: Progress
    #: an event to record: (reason, message); RolloutStepped, RolloutSucceeded, RolloutAborted, ...
    event: tuple[str, str] | None = None
    promote: bool = False
    rollback: bool = False


def start(canary: str, stable: str, now: float) -> Progress:
    return Progress(canary, stable, stage=0, stage_started=now)


def judge(
    progress: Progress,
    plan: Sequence[Stage],
    verdicts: Sequence[Verdict],
    now: float,
    *,
    failure_budget: int,
    on_success: Literal["promote", "wait"],
    canary_ready: bool = True,
) -> Decision:
    """One look: the checks' `verdicts` over the current stage's window so far."""
    if progress.state in DONE or progress.state == "waiting":
        return Decision(progress)
    if not canary_ready:
        why = f"the canary revision {progress.canary} is not ready"
        return _aborted(progress, why, verdicts)
    if progress.state == "paused":
        return Decision(replace(progress, verdicts=tuple(verdicts)))
    final = progress.final_look(plan, now)
    looked = replace(progress, looks=progress.looks + 1, verdicts=tuple(verdicts))
    failed = [v for v in verdicts if v.outcome == "fail"]
    if failed:
        looked = replace(looked, failures=looked.failures + len(failed))
        if looked.failures > failure_budget:
            return _aborted(looked, _failed_text(plan[progress.stage], failed), verdicts)
    if not final:
        return Decision(replace(looked, reason=f"{plan[progress.stage]}: judging"))
    pending = [v for v in verdicts if v.outcome == "pending"]
    if pending or failed:
        waiting_for = "; ".join(f"{v.check}: {v.message}" for v in (*pending, *failed))
        return Decision(replace(looked, reason=f"{plan[progress.stage]}: held: {waiting_for}"))
    passed = f"{plan[progress.stage]} passed ({', '.join(v.check for v in verdicts) or 'no checks'})"
    if progress.stage + 1 < len(plan):
        following = plan[progress.stage + 1]
        moved = replace(looked, stage=progress.stage + 1, stage_started=now, looks=0, reason=f"{following}")
        return Decision(moved, ("RolloutStepped", f"{progress.canary}: {passed}; now {following}"))
    if on_success == "wait":
        waiting = replace(looked, state="waiting", reason=f"{passed}; waiting for `servegate promote`")
        return Decision(waiting, ("RolloutWaiting", f"{progress.canary}: {waiting.reason}"))
    done = replace(looked, state="succeeded", reason=passed)
    return Decision(
        done, ("RolloutSucceeded", f"{progress.canary}: every step passed; promoted"), promote=True
    )


def pause(progress: Progress, by: str) -> Progress:
    if progress.state != "running":
        raise ValueError(f"the rollout of {progress.canary} is {progress.state}, not running")
    return replace(progress, state="paused", reason=f"paused by {by}")


def resume(progress: Progress, now: float, by: str) -> Progress:
    """Back to running; the stage's hold starts again (its window too)."""
    if progress.state != "paused":
        raise ValueError(f"the rollout of {progress.canary} is {progress.state}, not paused")
    return replace(progress, state="running", stage_started=now, looks=0, reason=f"resumed by {by}")


def abort(progress: Progress, by: str) -> Decision:
    if progress.state in DONE:
        raise ValueError(f"the rollout of {progress.canary} has already {progress.state}")
    return _aborted(progress, f"aborted by {by}", progress.verdicts)


def _aborted(progress: Progress, why: str, verdicts: Sequence[Verdict]) -> Decision:
    done = replace(progress, state="aborted", reason=why, verdicts=tuple(verdicts))
    return Decision(done, ("RolloutAborted", f"{progress.canary}: {why}; rolled back"), rollback=True)


def _failed_text(stage: Stage, failed: Sequence[Verdict]) -> str:
    """The failed checks in words; each verdict's message has its figures and p-value."""
    return "; ".join(f"{v.check} failed at {stage}: {v.message}" for v in failed)
