"""servegate's rollout strategy (`spec.rollout` of an InferenceService): how a new predictor revision
goes from nothing to all the traffic, and what must hold on the way.

    rollout:
      shadow: {percent: 100, hold: 2m}     # mirrored requests only: the canary's answers are compared
      steps:                               # live traffic, rising
        - {weight: 10, hold: 2m}
        - {weight: 25, hold: 2m}
        - {weight: 50, hold: 5m}
      checks:                              # canary against stable, over the same window
        - {metric: errorRate, maxIncrease: 0.01}
        - {metric: latency, quantile: p99, maxRatio: 1.2}
        - {metric: promql, query: 'max(my_gauge{revision="{{revision}}"})', max: 5}
        - {metric: agreement, minShare: 0.95}              # needs `shadow`
      minSamples: 100      # requests per revision before a step may pass
      failureBudget: 0     # failed checks tolerated; one more rolls back
      confidence: 0.99     # how sure a test must be before it fails a canary
      interval: 10s        # how often the checks are judged
      onSuccess: promote   # or wait (for `servegate promote`)

Without `steps`, KServe's `predictor.canaryTrafficPercent` is the one step, held for `window`.
Durations are Go durations (`30s`, `2m`, `1h30m`), as in the autoscaler's annotations.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from serving.spec.common import KModel, Problem

__all__ = ["DEFAULT_CHECKS", "RolloutCheck", "RolloutStep", "RolloutStrategy", "ShadowPhase", "duration_s"]

METRICS = ("errorRate", "latency", "promql", "agreement")


def duration_s(text: str) -> float:
    """A Go duration in seconds (ValueError when it is not one)."""
    from autoscaler.config import parse_duration  # autoscaler.config reads serving.spec.common

    return parse_duration(text)


def _duration(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 30s, 2m or 1h30m")
    if duration_s(value) <= 0:
        raise ValueError(f"must be longer than 0, not '{value}'")
    return value


#: a positive Go duration, kept as written (`2m`); `duration_s` reads it.
Duration = Annotated[str, BeforeValidator(_duration)]


class RolloutStep(KModel):
    """Live traffic: `weight` percent of requests go to the canary for `hold`."""

    weight: int = Field(ge=1, le=99)
    hold: Duration


class ShadowPhase(KModel):
    """Before any live traffic: `percent` of requests are also sent to the canary for `hold`; the
    clients get the stable revision's answers, the checks compare both."""

    percent: int = Field(100, ge=1, le=100)
    hold: Duration


class RolloutCheck(KModel):
    """One comparison of the canary with the stable revision. Which fields apply depends on `metric`:

    - errorRate: `maxIncrease`, how much higher (a share, 0.01 = one point) the canary's error rate
      may be before a one-sided exact test says it is worse;
    - latency: `quantile` (p50 or p99) and `maxRatio`, how much slower it may be: a rank test
      must find the canary surely slower than `maxRatio` times the stable (see analysis.latency);
    - promql: `query` (with `{{revision}}`, `{{service}}`), judged against `max` and/or `min`;
    - agreement: during the shadow phase, the share of mirrored requests whose answers agree:
      the same argmax for classifiers, within `tolerance` for regressors; at least `minShare`.
    """

    metric: Literal["errorRate", "latency", "promql", "agreement"]
    #: the check's name in events and status (default: the metric, with the quantile for latency).
    name: str | None = Field(None, max_length=63)
    max_increase: float | None = Field(None, ge=0, le=1)
    quantile: Literal["p50", "p99"] | None = None
    max_ratio: float | None = Field(None, ge=1)
    query: str | None = Field(None, min_length=1, max_length=4096)
    max: float | None = None
    min: float | None = None
    min_share: float | None = Field(None, gt=0, le=1)
    tolerance: float | None = Field(None, ge=0)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return f"latency {self.quantile or 'p99'}" if self.metric == "latency" else self.metric

    def problems(self, prefix: str) -> list[Problem]:
        """Fields that belong to another metric, and what a metric cannot do without."""
        own = _OWN_FIELDS[self.metric]
        problems = [
            Problem(f"{prefix}.{alias}", f"does not apply to {self.metric} checks")
            for field, alias in _CHECK_FIELDS.items()
            if field not in own and getattr(self, field) is not None
        ]
        if self.metric == "promql":
            if self.query is None:
                problems.append(Problem(f"{prefix}.query", "a promql check needs a query"))
            if self.max is None and self.min is None:
                problems.append(Problem(prefix, "a promql check needs max, min or both"))
            elif self.max is not None and self.min is not None and self.min > self.max:
                problems.append(Problem(f"{prefix}.min", f"is above max ({self.min} > {self.max})"))
        if self.metric == "agreement" and self.min_share is None:
            problems.append(Problem(f"{prefix}.minShare", "an agreement check needs minShare (e.g. 0.95)"))
        return problems


#: the check fields, Python name -> manifest name.
_CHECK_FIELDS = {
    "max_increase": "maxIncrease",
    "quantile": "quantile",
    "max_ratio": "maxRatio",
    "query": "query",
    "max": "max",
    "min": "min",
    "min_share": "minShare",
    "tolerance": "tolerance",
}
_OWN_FIELDS = {
    "errorRate": {"max_increase"},
    "latency": {"quantile", "max_ratio"},
    "promql": {"query", "max", "min"},
    "agreement": {"min_share", "tolerance"},
}

#: what a strategy checks when it names no checks: errors and p99 latency.
DEFAULT_CHECKS = (
    RolloutCheck(metric="errorRate", max_increase=0.0),
    RolloutCheck(metric="latency", quantile="p99", max_ratio=1.2),
)


class RolloutStrategy(KModel):
    shadow: ShadowPhase | None = None
    steps: list[RolloutStep] = Field(default_factory=list, max_length=20)
    #: with no `steps`: how long the one step at `canaryTrafficPercent` is held and judged.
    window: Duration | None = None
    checks: list[RolloutCheck] | None = Field(None, max_length=20)
    min_samples: int = Field(100, ge=1)
    failure_budget: int = Field(0, ge=0)
    confidence: float = Field(0.99, ge=0.5, lt=1)
    interval: Duration = "10s"
    on_success: Literal["promote", "wait"] = "promote"

    @property
    def judged(self) -> tuple[RolloutCheck, ...]:
        """The checks to run: those given, or DEFAULT_CHECKS."""
        return tuple(self.checks) if self.checks is not None else DEFAULT_CHECKS

    def problems(self, prefix: str, canary_percent: int | None) -> list[Problem]:
        """Steps that do not rise, a missing window, checks that do not fit, repeated names.
        `canary_percent`: the predictor's `canaryTrafficPercent`."""
        problems: list[Problem] = []
        if self.steps:
            for i, (before, step) in enumerate(zip(self.steps, self.steps[1:], strict=False), start=1):
                if step.weight <= before.weight:
                    problems.append(
                        Problem(
                            f"{prefix}.steps[{i}].weight",
                            f"weights must rise: {step.weight} after {before.weight}",
                        )
                    )
            if canary_percent is not None:
                problems.append(
                    Problem(
                        f"{prefix}.steps",
                        "give steps or the predictor's canaryTrafficPercent with window, not both",
                    )
                )
            if self.window is not None:
                problems.append(
                    Problem(f"{prefix}.window", "applies only without steps (each step has its hold)")
                )
        elif canary_percent is None or canary_percent >= 100:
            problems.append(
                Problem(prefix, "needs steps, or the predictor's canaryTrafficPercent (1-99) with a window")
            )
        elif self.window is None:
            problems.append(
                Problem(f"{prefix}.window", "how long to judge the canary at canaryTrafficPercent")
            )
        seen: set[str] = set()
        for i, check in enumerate(self.checks or ()):
            path = f"{prefix}.checks[{i}]"
            problems += check.problems(path)
            if check.metric == "agreement" and self.shadow is None:
                problems.append(
                    Problem(f"{path}.metric", "agreement is judged on mirrored requests: add a shadow phase")
                )
            if check.label in seen:
                problems.append(
                    Problem(f"{path}.name", f"'{check.label}' is repeated: give each check a name")
                )
            seen.add(check.label)
        return problems

    def weights(self, canary_percent: int | None) -> tuple[tuple[int, float], ...]:
        """The live steps as (weight, hold seconds)."""
        if self.steps:
            return tuple((s.weight, duration_s(s.hold)) for s in self.steps)
        assert canary_percent is not None and self.window is not None  # problems() says so
        return ((canary_percent, duration_s(self.window)),)
