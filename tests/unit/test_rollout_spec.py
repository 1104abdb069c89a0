"""`spec.rollout` read and refused by field path: steps that do not rise, a zero hold, an unknown
metric, checks that do not fit their metric, agreement without a shadow phase."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from serving.spec.common import problems_from
from serving.spec.rollout import DEFAULT_CHECKS, RolloutStrategy

STEPS = [{"weight": 10, "hold": "2m"}, {"weight": 25, "hold": "2m"}, {"weight": 50, "hold": "5m"}]


def _problems(doc: dict[str, Any], canary_percent: int | None = None) -> list[str]:
    try:
        strategy = RolloutStrategy.model_validate(doc)
    except ValidationError as exc:
        return [str(p) for p in problems_from(exc, "spec.rollout")]
    return [str(p) for p in strategy.problems("spec.rollout", canary_percent)]


def test_a_stepped_strategy_reads_with_defaults() -> None:
    strategy = RolloutStrategy.model_validate({"steps": STEPS, "shadow": {"hold": "1m"}})
    assert strategy.problems("spec.rollout", None) == []
    assert strategy.weights(None) == ((10, 120.0), (25, 120.0), (50, 300.0))
    assert strategy.judged == DEFAULT_CHECKS
    assert (strategy.min_samples, strategy.failure_budget, strategy.on_success) == (100, 0, "promote")
    assert strategy.shadow is not None and strategy.shadow.percent == 100


def test_kserves_canary_percent_is_one_step_held_for_the_window() -> None:
    strategy = RolloutStrategy.model_validate({"window": "5m"})
    assert strategy.problems("spec.rollout", 20) == []
    assert strategy.weights(20) == ((20, 300.0),)


@pytest.mark.parametrize(
    ("doc", "canary_percent", "expected"),
    [
        ({"steps": [{"weight": 25, "hold": "1m"}, {"weight": 10, "hold": "1m"}]}, None,
         "spec.rollout.steps[1].weight: weights must rise: 10 after 25"),
        ({"steps": [{"weight": 10, "hold": "0"}]}, None, "spec.rollout.steps[0].hold: must be longer than 0"),
        ({"steps": [{"weight": 10, "hold": "soon"}]}, None, "spec.rollout.steps[0].hold: is not a duration"),
        ({"steps": [{"weight": 100, "hold": "1m"}]}, None,
         "spec.rollout.steps[0].weight: Input should be less than or equal to 99"),
        ({"steps": STEPS, "checks": [{"metric": "throughput"}]}, None,
         "spec.rollout.checks[0].metric: Input should be 'errorRate'"),
        ({"steps": STEPS}, 20, "spec.rollout.steps: give steps or the predictor's canaryTrafficPercent"),
        ({}, None, "spec.rollout: needs steps, or the predictor's canaryTrafficPercent"),
        ({}, 20, "spec.rollout.window: how long to judge the canary"),
        ({"steps": STEPS, "checks": [{"metric": "promql", "max": 1}]}, None,
         "spec.rollout.checks[0].query: a promql check needs a query"),
        ({"steps": STEPS, "checks": [{"metric": "promql", "query": "up"}]}, None,
         "spec.rollout.checks[0]: a promql check needs max, min or both"),
        ({"steps": STEPS, "checks": [{"metric": "errorRate", "maxRatio": 2}]}, None,
         "spec.rollout.checks[0].maxRatio: does not apply to errorRate checks"),
        ({"steps": STEPS, "checks": [{"metric": "agreement", "minShare": 0.9}]}, None,
         "spec.rollout.checks[0].metric: agreement is judged on mirrored requests: add a shadow phase"),
        ({"steps": STEPS, "shadow": {"hold": "1m"}, "checks": [{"metric": "agreement"}]}, None,
         "spec.rollout.checks[0].minShare: an agreement check needs minShare"),
        ({"steps": STEPS, "checks": [{"metric": "errorRate"}, {"metric": "errorRate"}]}, None,
         "spec.rollout.checks[1].name: 'errorRate' is repeated"),
        ({"steps": STEPS, "confidence": 1.0}, None, "spec.rollout.confidence"),
        ({"steps": STEPS, "onSuccess": "celebrate"}, None, "spec.rollout.onSuccess"),
    ],
)  # fmt: skip
def test_bad_strategies_are_refused_by_field_path(
    doc: dict[str, Any], canary_percent: int | None, expected: str
) -> None:
    problems = _problems(doc, canary_percent)
    assert any(p.startswith(expected) for p in problems), problems
