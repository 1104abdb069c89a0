"""The scaling policy stepped through tables on a fake clock, in the manner of Knative's autoscaler tests.

Each row is one decision: at time `t`, the stable and panic averages (totals over the revision) and
the ready replicas go in; the replicas wanted and the panic flag come out (`desired` None: NoData).
The state is threaded from row to row. A request counts as seen at `t` when the panic average is
above zero, or when the row says `seen`. With the default config a replica carries 100 * 0.7 = 70.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import pytest

from autoscaler.config import ScalingConfig
from autoscaler.policy import Decision, NoData, Observed, PolicyState, decide

DEFAULT = ScalingConfig()
TO_ZERO = ScalingConfig(min_replicas=0)


class Step(NamedTuple):
    t: float
    stable: float | None
    panic: float | None
    ready: int
    desired: int | None
    panic_mode: bool = False
    seen: bool = False


def run(
    config: ScalingConfig,
    steps: list[Step],
    state: PolicyState | None = None,
    last_activity: float | None = None,
) -> PolicyState:
    """Steps the policy through `steps`, checking each row; returns the final state."""
    state = state or PolicyState()
    for step in steps:
        if step.seen or (step.panic or 0) > 0:
            last_activity = step.t
        result = decide(Observed(step.stable, step.panic, last_activity), config, step.ready, step.t, state)
        got = (None, False) if isinstance(result, NoData) else (result.desired, result.panic)
        assert got == (step.desired, step.panic_mode), f"at t={step.t}: {result}"
        if isinstance(result, Decision):
            assert result.reason
            state = result.state
    return state


def test_steady_load_holds_its_size() -> None:
    run(
        DEFAULT,
        [
            Step(0, 210, 210, 3, 3),
            Step(2, 200, 215, 3, 3),  # 200 / 70 = 2.86 -> 3
            Step(4, 210, 190, 3, 3),
            Step(6, 210.0001, 210, 3, 4),  # a whisker over three replicas' worth asks for a fourth
        ],
    )


def test_ramp_follows_the_stable_window() -> None:
    run(
        DEFAULT,
        [
            Step(0, 140, 140, 2, 2),
            Step(2, 170, 200, 2, 3),
            Step(4, 220, 260, 3, 4),
            # The panic window wants 5, but 5/4 is under the threshold: stable mode, stable wins.
            Step(6, 280, 340, 4, 4),
            Step(8, 350, 360, 4, 5),
        ],
    )


def test_spike_enters_panic_and_scales_on_the_panic_window() -> None:
    run(
        DEFAULT,
        [
            Step(0, 140, 140, 2, 2),
            Step(2, 150, 700, 2, 10, panic_mode=True),  # 700/70 = 10 pods, 10/2 >= 200%
            Step(4, 200, 1400, 10, 20, panic_mode=True),  # still rising: only increases apply
        ],
    )


def test_stable_window_wins_in_panic_when_it_wants_more() -> None:
    # Knative provisions for the larger of the two windows while panicking.
    run(DEFAULT, [Step(0, 770, 280, 1, 11, panic_mode=True)])  # 280/70 = 4 pods >= 2 * 1 ready


def test_panic_exits_a_stable_window_after_the_last_spike_and_never_scales_down_before() -> None:
    run(
        DEFAULT,
        [
            Step(0, 140, 140, 2, 2),
            Step(2, 150, 700, 2, 10, panic_mode=True),
            Step(4, 300, 350, 10, 10, panic_mode=True),  # load fell: stable wants 5, panic holds 10
            Step(30, 300, 300, 10, 10, panic_mode=True),
            Step(62, 300, 300, 10, 10, panic_mode=True),  # 60 s since the spike: not yet more
            Step(64, 300, 300, 10, 5),  # a whole stable window calm: stable mode, rate allows 5
            Step(66, 300, 300, 5, 5),
        ],
    )


def test_a_new_spike_extends_panic() -> None:
    state = run(DEFAULT, [Step(0, 70, 280, 1, 4, panic_mode=True)])
    run(
        DEFAULT,
        [
            Step(40, 70, 700, 4, 10, panic_mode=True),  # over threshold again at t=40
            Step(90, 70, 70, 10, 10, panic_mode=True),  # 50 s after the last spike: still panic
            Step(101, 70, 70, 10, 5),  # 61 s after it: out, halving at most
        ],
        state,
    )


def test_panic_threshold_is_configurable() -> None:
    config = replace(DEFAULT, panic_threshold_pct=150)
    run(config, [Step(0, 140, 210, 2, 3, panic_mode=True)])  # 3 pods / 2 ready = 150%
    run(DEFAULT, [Step(0, 140, 210, 2, 2)])


def test_scale_down_is_rate_limited_to_halving_per_decision() -> None:
    run(
        DEFAULT,
        [
            Step(0, 70, 70, 8, 4),
            Step(2, 70, 70, 4, 2),
            Step(4, 70, 70, 2, 1),
            Step(6, 70, 70, 1, 1),
        ],
    )
    run(replace(DEFAULT, max_scale_down_rate=4), [Step(0, 70, 70, 8, 2)])
    run(replace(DEFAULT, max_scale_down_rate=1.5), [Step(0, 70, 70, 9, 6)])  # floor(9 / 1.5)


def test_scale_up_is_rate_limited_relative_to_ready_replicas() -> None:
    config = replace(DEFAULT, max_scale_up_rate=2)
    run(
        config,
        [
            Step(0, 700, 700, 0, 2, panic_mode=True),  # zero ready counts as one: at most 2
            Step(2, 700, 700, 2, 4, panic_mode=True),
            Step(4, 700, 700, 4, 8, panic_mode=True),
            Step(6, 700, 700, 8, 10, panic_mode=True),
        ],
    )
    # Knative's "at least one more pod": ceil(1.1 * 2) = 3, so a slow rate still makes progress.
    run(replace(DEFAULT, max_scale_up_rate=1.1), [Step(0, 210, 140, 2, 3)])


def test_bounds_apply_after_the_policy() -> None:
    config = replace(DEFAULT, min_replicas=2, max_replicas=5)
    run(
        config,
        [
            Step(0, 10, 10, 2, 2),  # wants 1: min 2
            Step(2, 1000, 0, 2, 5),  # wants 15: max 5
            Step(4, 1000, 0, 5, 5),
            Step(6, 0, 0, 5, 2),  # idle but min 2: never zero
        ],
    )


def test_no_upper_bound_when_max_is_zero() -> None:
    run(replace(DEFAULT, max_replicas=0), [Step(0, 7000, 0, 100, 100)])


def test_scales_to_zero_only_after_the_grace_period_without_requests() -> None:
    run(
        TO_ZERO,
        [
            Step(0, 35, 35, 1, 1),  # last request seen at t=0
            Step(10, 20, 0, 1, 1),
            Step(30, 0, 0, 1, 1),  # stable is 0, but only 30 s idle: the grace period is 30 s
            Step(32, 0, 0, 1, 0),
            Step(34, 0, 0, 0, 0),
            Step(60, None, None, 0, None),  # nothing measured at zero: hold
        ],
    )


def test_does_not_scale_to_zero_while_the_stable_average_is_above_zero() -> None:
    run(TO_ZERO, [Step(100, 0.5, 0, 1, 1)], last_activity=0)


def test_never_scales_to_zero_with_min_replicas() -> None:
    run(DEFAULT, [Step(100, 0, 0, 1, 1)], last_activity=0)


def test_scale_down_to_zero_is_rate_limited_like_any_other() -> None:
    run(TO_ZERO, [Step(100, 0, 0, 4, 2), Step(102, 0, 0, 2, 1), Step(104, 0, 0, 1, 0)], last_activity=0)


def test_grace_period_is_configurable() -> None:
    config = replace(TO_ZERO, scale_to_zero_grace_s=120)
    run(config, [Step(100, 0, 0, 1, 1), Step(121, 0, 0, 1, 0)], last_activity=0)


def test_from_zero_any_activity_gives_a_replica_at_once() -> None:
    run(
        TO_ZERO,
        [
            Step(100, 0, 0, 0, 0),
            Step(102, 0, 0, 0, 1, seen=True),  # the router saw a request; averages still 0
            Step(104, 0.1, 3, 0, 1),  # three requests queued: one replica
            Step(106, 0.2, 3, 1, 1),
        ],
        last_activity=0,
    )


def test_from_zero_with_no_metric_yet_a_waiting_request_still_gets_a_replica() -> None:
    run(TO_ZERO, [Step(100, None, None, 0, 1, seen=True)], last_activity=0)
    run(TO_ZERO, [Step(100, None, None, 0, None)], last_activity=0)  # idle at zero: hold
    run(TO_ZERO, [Step(100, None, None, 2, None, seen=True)])  # replicas up: hold until measured


def test_from_zero_a_burst_scales_straight_to_its_size() -> None:
    run(TO_ZERO, [Step(0, 50, 700, 0, 10, panic_mode=True)])


def test_no_data_holds_and_keeps_the_state() -> None:
    state = run(DEFAULT, [Step(0, 150, 700, 2, 10, panic_mode=True)])
    result = decide(Observed(None, None, 0), DEFAULT, 10, 2, state)
    assert isinstance(result, NoData)
    assert "concurrency" in result.reason
    # The caller keeps its state across NoData: panic resumes where it was.
    run(DEFAULT, [Step(4, 70, 70, 10, 10, panic_mode=True)], state)


def test_missing_panic_average_reads_as_zero() -> None:
    run(DEFAULT, [Step(0, 140, None, 2, 2)])


@pytest.mark.parametrize(
    ("metric", "target", "stable", "ready", "desired"),
    [
        ("cpu", 80, 300, 3, 4),  # 3 replicas at 100% of a core, aiming at 80%: ceil(300 / 80)
        ("cpu", 80, 240, 3, 3),  # exactly on target
        ("cpu", 50, 240, 3, 5),
        ("memory", 80, 200, 4, 3),  # no utilization factor on resource metrics
        ("memory", 80, 50, 4, 2),  # wants 1, halving at most
        ("rps", 200, 700, 2, 5),  # rps does take the 70%: 700 / 140
        ("custom", 10, 95, 5, 10),  # the query's total over 10 per replica
    ],
)
def test_per_metric_math(metric: str, target: float, stable: float, ready: int, desired: int) -> None:
    config = replace(DEFAULT, metric=metric, target=target, query="q" if metric == "custom" else None)
    run(config, [Step(0, stable, 0, ready, desired)])


def test_scale_down_delay_keeps_the_highest_recent_count() -> None:
    config = replace(DEFAULT, scale_down_delay_s=10)
    run(
        config,
        [
            Step(0, 350, 350, 5, 5),
            Step(2, 70, 70, 5, 5),  # wants 2 (halving), delayed
            Step(6, 70, 70, 5, 5),
            Step(10, 70, 70, 5, 2),  # the 5 at t=0 is 10 s old: out of the delay window
            Step(12, 210, 210, 2, 3),  # going up is never delayed
            Step(14, 70, 70, 3, 3),
        ],
    )


def test_restarted_autoscaler_starts_in_panic_at_the_current_size() -> None:
    assert PolicyState.initial(1, 0) == PolicyState()
    state = PolicyState.initial(6, now=0)
    run(
        DEFAULT,
        [
            Step(2, 70, 70, 6, 6, panic_mode=True),  # history lost: keep the 6 for now
            Step(61, 70, 70, 6, 3),
        ],
        state,
    )


def test_decision_reports_what_it_saw() -> None:
    result = decide(Observed(210, 210, 0), DEFAULT, 3, 0, PolicyState())
    assert isinstance(result, Decision)
    assert result.observed_per_replica == 70
    assert "210" in result.reason
    zero = decide(Observed(0, 0, None), TO_ZERO, 1, 100, PolicyState())
    assert isinstance(zero, Decision)
    assert zero.desired == 0
    assert zero.observed_per_replica == 0
    assert "zero" in zero.reason
