"""The rollout's step logic as tables, on a fake clock: stages from a strategy, a look's decision
from its verdicts, the failure budget, held stages, promotion or waiting, pause, resume, abort."""

from __future__ import annotations

from typing import Literal

import pytest

from serving.controller.analysis import Verdict
from serving.controller.progressive import (
    Decision,
    Progress,
    Stage,
    abort,
    judge,
    pause,
    resume,
    stages,
    start,
)
from serving.spec.rollout import RolloutStrategy

STRATEGY = RolloutStrategy.model_validate(
    {
        "shadow": {"percent": 50, "hold": "1m"},
        "steps": [{"weight": 10, "hold": "2m"}, {"weight": 50, "hold": "5m"}],
    }
)
PLAN = stages(STRATEGY, None)
OK = Verdict("errorRate", "pass", {}, 0.6, "not worse")
SHORT = Verdict("errorRate", "pending", {}, None, "12 of 100 samples")
BAD = Verdict(
    "errorRate", "fail", {"canaryRate": 0.05}, 1e-6, "canary 5.00% (10/200) vs stable 0.00% (0/1800): worse"
)
SLOW = Verdict("latency p99", "fail", {}, 1e-9, "p99 canary 12 ms vs stable 4 ms: slower")


def _judge(
    progress: Progress,
    verdicts: list[Verdict],
    now: float,
    budget: int = 0,
    on_success: Literal["promote", "wait"] = "promote",
    ready: bool = True,
) -> Decision:
    return judge(
        progress, PLAN, verdicts, now, failure_budget=budget, on_success=on_success, canary_ready=ready
    )


def test_stages_are_the_shadow_phase_then_the_steps() -> None:
    assert stages(STRATEGY, None) == (
        Stage("shadow", 50, 60.0),
        Stage("live", 10, 120.0),
        Stage("live", 50, 300.0),
    )
    assert stages(RolloutStrategy.model_validate({"window": "5m"}), 20) == (Stage("live", 20, 300.0),)


@pytest.mark.parametrize(
    ("stage", "state", "traffic"),
    [(0, "running", (0, 50)), (1, "running", (10, 0)), (2, "paused", (50, 0)), (2, "aborted", (0, 0))],
)
def test_traffic_of_each_stage(stage: int, state: str, traffic: tuple[int, int]) -> None:
    assert Progress("c", "s", stage, 0.0, state).traffic(PLAN) == traffic  # type: ignore[arg-type]


def test_a_good_canary_walks_every_stage_and_is_promoted() -> None:
    progress, now, events = start("c", "s", 0.0), 0.0, []
    while True:
        now += 10
        decision = _judge(progress, [OK], now)
        progress = decision.progress
        if decision.event:
            events.append((now, decision.event[0]))
        if progress.state != "running":
            break
    assert events == [(60, "RolloutStepped"), (180, "RolloutStepped"), (480, "RolloutSucceeded")]
    assert decision.promote and not decision.rollback and progress.state == "succeeded"


@pytest.mark.parametrize(
    ("verdicts", "now", "budget", "state", "stage", "event"),
    [
        ([OK], 30, 0, "running", 0, None),  # mid-stage: nothing to do
        ([SHORT], 30, 0, "running", 0, None),
        ([SHORT], 70, 0, "running", 0, None),  # hold over, samples short: held
        ([OK, SHORT], 70, 0, "running", 0, None),
        ([OK], 70, 0, "running", 1, "RolloutStepped"),
        ([BAD], 30, 0, "aborted", 0, "RolloutAborted"),  # the first decisive failure
        ([BAD], 30, 1, "running", 0, None),  # within the budget
        ([BAD, SLOW], 30, 1, "aborted", 0, "RolloutAborted"),
        ([BAD], 70, 1, "running", 0, None),  # a failure within budget holds the stage
    ],
)
def test_one_look(
    verdicts: list[Verdict], now: float, budget: int, state: str, stage: int, event: str | None
) -> None:
    decision = _judge(start("c", "s", 0.0), verdicts, now, budget)
    assert (decision.progress.state, decision.progress.stage) == (state, stage)
    assert (decision.event[0] if decision.event else None) == event
    assert decision.rollback == (state == "aborted")


def test_an_abort_names_the_check_its_figures_and_p_value() -> None:
    decision = _judge(Progress("c", "s", 1, 0.0), [OK, BAD], 30)
    reason, message = decision.event or ("", "")
    assert reason == "RolloutAborted"
    assert message.startswith("c: errorRate failed at 10% live: canary 5.00% (10/200)")
    assert message.endswith("; rolled back")
    assert decision.progress.verdicts == (OK, BAD)


def test_the_budget_counts_failures_across_looks() -> None:
    progress = start("c", "s", 0.0)
    progress = _judge(progress, [BAD], 10, budget=1).progress
    assert progress.state == "running" and progress.failures == 1
    assert _judge(progress, [BAD], 20, budget=1).progress.state == "aborted"


def test_a_canary_that_stops_being_ready_fails_the_rollout() -> None:
    decision = _judge(Progress("c", "s", 1, 0.0), [OK], 30, ready=False)
    assert decision.rollback and "not ready" in decision.progress.reason


def test_on_success_wait_holds_at_the_last_step_for_a_person() -> None:
    decision = _judge(Progress("c", "s", 2, 0.0), [OK], 300, on_success="wait")
    assert decision.progress.state == "waiting" and not decision.promote
    assert decision.event and decision.event[0] == "RolloutWaiting"
    assert decision.progress.traffic(PLAN) == (50, 0)
    assert _judge(decision.progress, [BAD], 400).progress.state == "waiting"


def test_pause_freezes_and_resume_restarts_the_stage() -> None:
    paused = pause(Progress("c", "s", 1, 0.0), "alice")
    assert paused.reason == "paused by alice"
    held = _judge(paused, [BAD], 500)
    assert held.progress.state == "paused" and not held.rollback
    resumed = resume(held.progress, 600.0, "alice")
    assert (resumed.state, resumed.stage_started, resumed.looks) == ("running", 600.0, 0)
    assert _judge(resumed, [OK], 700).progress.stage == 1  # 100 s of a 120 s hold
    with pytest.raises(ValueError, match="not paused"):
        resume(resumed, 700.0, "alice")


def test_a_person_may_abort_but_not_twice() -> None:
    decision = abort(Progress("c", "s", 1, 0.0), "bob")
    assert decision.rollback and decision.event == ("RolloutAborted", "c: aborted by bob; rolled back")
    with pytest.raises(ValueError, match="already aborted"):
        abort(decision.progress, "bob")
