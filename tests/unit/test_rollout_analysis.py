"""Canary analysis as tables: each check's verdict from the two revisions' figures, and the
statistics' promise not to cry wolf (equal canaries, many times, seeded)."""

from __future__ import annotations

import numpy as np
import pytest

from router.agreement import NotComparable, agreeing_rows, answers_agree
from serving.controller.analysis import (
    Counts,
    agreement,
    error_rate,
    latency,
    look_alpha,
    threshold,
)
from serving.spec.rollout import RolloutCheck

ERRORS = RolloutCheck(metric="errorRate")
ALPHA = 0.005
#: simulated steps of an equal canary (seeded): two checks at 1% each promise under 2 false alarms
STEPS = 100


@pytest.mark.parametrize(
    ("canary", "stable", "check", "outcome"),
    [
        # 3 errors in 40 (7.5%?) against the stable's 2 in 360: not certain; too few samples to pass.
        (Counts(40, 3), Counts(360, 2), ERRORS, "pending"),
        # 5% errors against none, over a step's worth of requests: decisive.
        (Counts(200, 10), Counts(1800, 0), ERRORS, "fail"),
        (Counts(2000, 100), Counts(18000, 0), ERRORS, "fail"),
        # the stable's rare errors, at the stable's rate: fine.
        (Counts(200, 1), Counts(1800, 9), ERRORS, "pass"),
        (Counts(200, 0), Counts(1800, 0), ERRORS, "pass"),
        # an allowed increase of 2 points absorbs 1% more errors, not 10% more.
        (Counts(1000, 20), Counts(9000, 90), RolloutCheck(metric="errorRate", max_increase=0.02), "pass"),
        (Counts(1000, 110), Counts(9000, 90), RolloutCheck(metric="errorRate", max_increase=0.02), "fail"),
        (Counts(0, 0), Counts(100, 0), ERRORS, "pending"),
    ],
)
def test_error_rate(canary: Counts, stable: Counts, check: RolloutCheck, outcome: str) -> None:
    verdict = error_rate(check, canary, stable, ALPHA, min_samples=100)
    assert verdict.outcome == outcome, verdict.message
    assert verdict.check == "errorRate"
    if verdict.outcome == "fail":
        assert verdict.p_value is not None and verdict.p_value < ALPHA
        assert "worse" in verdict.message and f"{canary.hits}/{canary.total}" in verdict.message


def _latencies(rng: np.random.Generator, n: int, median_ms: float) -> np.ndarray:
    return rng.lognormal(np.log(median_ms), 0.3, n)


@pytest.mark.parametrize(
    ("factor", "n", "check", "outcome"),
    [
        (3.0, 200, RolloutCheck(metric="latency", quantile="p99", max_ratio=1.2), "fail"),
        (3.0, 200, RolloutCheck(metric="latency", quantile="p50", max_ratio=1.5), "fail"),
        (1.0, 200, RolloutCheck(metric="latency", quantile="p99", max_ratio=1.2), "pass"),
        # slower for sure, but within the ratio allowed: passes.
        (1.1, 2000, RolloutCheck(metric="latency", quantile="p50", max_ratio=1.2), "pass"),
        (1.0, 20, RolloutCheck(metric="latency", quantile="p99", max_ratio=1.2), "pending"),
    ],
)
def test_latency(factor: float, n: int, check: RolloutCheck, outcome: str) -> None:
    rng = np.random.default_rng(7)
    stable = _latencies(rng, n * 9, 4.0)
    canary = _latencies(rng, n, 4.0 * factor)
    verdict = latency(check, canary.tolist(), stable.tolist(), ALPHA, min_samples=100)
    assert verdict.outcome == outcome, verdict.message
    assert verdict.check == f"latency {check.quantile}"


@pytest.mark.parametrize("quantile", ["p50", "p99"])
def test_a_canary_a_little_slower_with_outliers_is_not_failed(quantile: str) -> None:
    """What a fresh, less busy canary process looks like on a loaded machine: surely slower, by
    15%, well inside `maxRatio`, and two of its 82 answers held up by the scheduler. Its p99 (those
    two set it) is three times the stable's, yet 2 answers in 82 are not surely over 1%."""
    rng = np.random.default_rng(11)
    stable = _latencies(rng, 1000, 4.0)
    canary = np.append(_latencies(rng, 80, 4.6), [24.0, 24.0])
    check = RolloutCheck(metric="latency", quantile=quantile, max_ratio=2)
    verdict = latency(check, canary.tolist(), stable.tolist(), ALPHA, min_samples=50)
    assert verdict.outcome == "pass", verdict.message


@pytest.mark.parametrize(
    ("agreed", "min_share", "outcome"),
    [
        (Counts(200, 200), 0.95, "pass"),
        (Counts(200, 22), 0.95, "fail"),  # shuffled labels: about one answer in ten agrees
        (Counts(200, 188), 0.95, "pass"),  # 94%: not surely below 95%
        (Counts(30, 30), 0.95, "pending"),
        (Counts(30, 3), 0.95, "fail"),  # decisive already
        (Counts(200, 199), 1.0, "fail"),  # every answer must agree
    ],
)
def test_agreement(agreed: Counts, min_share: float, outcome: str) -> None:
    check = RolloutCheck(metric="agreement", min_share=min_share)
    verdict = agreement(check, agreed, ALPHA, min_samples=100)
    assert verdict.outcome == outcome, verdict.message


@pytest.mark.parametrize(
    ("value", "bounds", "outcome"),
    [
        (3.0, {"max": 5.0}, "pass"),
        (6.0, {"max": 5.0}, "fail"),
        (0.5, {"min": 1.0}, "fail"),
        (None, {"max": 1.0}, "pending"),
    ],
)
def test_promql_threshold(value: float | None, bounds: dict[str, float], outcome: str) -> None:
    check = RolloutCheck(metric="promql", query="up", **bounds)
    assert threshold(check, value).outcome == outcome


def test_answers_agree_by_argmax_labels_or_tolerance() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.4]], dtype=np.float32)
    shifted = np.array([[0.3, 0.7], [0.6, 0.4], [0.4, 0.5]], dtype=np.float32)
    assert agreeing_rows(scores, shifted, None) == (2, 3)
    assert agreeing_rows(np.array([1, 2, 3]), np.array([1, 2, 4]), None) == (2, 3)
    values = np.array([[1.0], [2.0], [100.0]])
    assert agreeing_rows(values, values + np.array([[0.005], [0.5], [0.5]]), 0.01) == (2, 3)
    with pytest.raises(NotComparable, match="tolerance"):
        agreeing_rows(values, values, None)
    with pytest.raises(NotComparable, match="shapes"):
        agreeing_rows(scores, scores[:2], None)
    # rows agree when every output both answers have agrees
    stable = {"scores": scores, "label": np.array([1, 0, 0])}
    canary = {"scores": shifted, "label": np.array([1, 1, 1]), "extra": np.zeros(3)}
    assert answers_agree(stable, canary, None) == (1, 3)
    with pytest.raises(NotComparable, match="no output in common"):
        answers_agree({"a": scores}, {"b": scores}, None)


def test_the_looks_of_a_step_spend_no_more_than_one_minus_confidence() -> None:
    looks = 12
    spent = looks * look_alpha(0.99, looks, final=False) + look_alpha(0.99, looks, final=True)
    assert spent == pytest.approx(0.01)


def test_equal_canaries_are_not_rolled_back() -> None:
    """Simulated steps of an equal canary (rare errors at the stable rate, jittery latency),
    each judged at 12 interim looks and a final one: false alarms stay at the promised rate."""
    rng = np.random.default_rng(2026)
    looks, confidence, alarms = 12, 0.99, 0
    checks = (ERRORS, RolloutCheck(metric="latency", quantile="p99", max_ratio=1.2))
    for _ in range(STEPS):
        canary_lat, stable_lat = np.empty(0), np.empty(0)
        canary, stable = Counts(0, 0), Counts(0, 0)
        failed = False
        for look in range(1, looks + 2):
            final = look > looks
            alpha = look_alpha(confidence, looks, final)
            c_n, s_n = 10, 90  # a 10% canary at 100 requests/s, 1 s per look
            canary = Counts(canary.total + c_n, canary.hits + int(rng.binomial(c_n, 0.005)))
            stable = Counts(stable.total + s_n, stable.hits + int(rng.binomial(s_n, 0.005)))
            canary_lat = np.concatenate([canary_lat, rng.lognormal(1.4, 0.5, c_n) + rng.exponential(2, c_n)])
            stable_lat = np.concatenate([stable_lat, rng.lognormal(1.4, 0.5, s_n) + rng.exponential(2, s_n)])
            verdicts = (
                error_rate(checks[0], canary, stable, alpha, 100),
                latency(checks[1], canary_lat.tolist(), stable_lat.tolist(), alpha, 100),
            )
            failed = failed or any(v.outcome == "fail" for v in verdicts)
        alarms += failed
    assert alarms <= 2, f"{alarms} of {STEPS} equal canaries failed"
