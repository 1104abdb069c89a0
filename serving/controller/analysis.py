"""Canary analysis, pure: one check's verdict from the canary's and the stable revision's figures over
the same window, with the statistics that keep small samples from deciding (Kayenta's idea).

Each verdict is `pass`, `fail` or `pending` (not enough samples yet). A check fails only when a
test is sure the canary is worse at the look's significance level `alpha`, and (for latency) by more
than the allowed ratio, so a noisy but equal canary is not rolled back:

- error rate: Fisher's exact test, one-sided, of the canary's errors against the stable's; with an
  allowed increase m, a binomial test of the canary's errors against the stable's upper confidence
  bound plus m. Three errors in 40 requests are not read as a 7.5% error rate with certainty.
- latency, with the allowed ratio r (`maxRatio`) inside the test rather than beside it (a canary
  a little slower for sure, as a freshly started or less busy process is, must not fail on a
  quantile that two outliers set): p50, the Mann-Whitney U rank test, one-sided, of the canary's
  latencies against r times the stable's; p99, a sign test of how many of the canary's latencies
  lie above r times the stable's p99 (more than 1% of them, surely, fails).
- agreement: a binomial test of the share of mirrored requests whose answers agree against
  `minShare` (classifiers: the same argmax; regressors: within `tolerance`).
- promql: the query's value against `max`/`min`, as it is.

`alpha` is the caller's: the controller spends 1 - confidence over a step, a smaller share at each
interim look and the rest at the step's end (`look_alpha`). scipy is imported on first use: the
gateway starts without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from serving.spec.rollout import RolloutCheck

__all__ = [
    "Counts",
    "Verdict",
    "agreement",
    "error_rate",
    "latency",
    "look_alpha",
    "threshold",
]

Outcome = Literal["pass", "fail", "pending"]


@dataclass(frozen=True, slots=True)
class Counts:
    """Requests of one revision over the window, and how many failed (or, for agreement, agreed)."""

    total: int
    hits: int

    @property
    def rate(self) -> float:
        return self.hits / self.total if self.total else 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    check: str
    outcome: Outcome
    #: what was compared, for status and events (rates as shares, latencies in ms).
    figures: dict[str, Any] = field(default_factory=dict)
    #: the test's p-value (None: no test ran, e.g. too few samples or a plain threshold).
    p_value: float | None = None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "outcome": self.outcome,
            "figures": self.figures,
            "pValue": self.p_value,
            "message": self.message,
        }


def look_alpha(confidence: float, looks: int, final: bool) -> float:
    """The significance level of one look at a step judged `looks` times: half of 1 - confidence
    spread over the interim looks, the other half at the step's end (so repeated looks cannot add up
    to a false alarm more often than 1 - confidence)."""
    alpha = 1.0 - confidence
    return alpha / 2 if final else alpha / 2 / max(1, looks)


def _p(value: float) -> str:
    return f"p={value:.2g}"


def error_rate(
    check: RolloutCheck, canary: Counts, stable: Counts, alpha: float, min_samples: int
) -> Verdict:
    """`hits` are failed requests."""
    from scipy import stats

    figures = {
        "canaryRate": round(canary.rate, 6),
        "stableRate": round(stable.rate, 6),
        "canaryRequests": canary.total,
        "stableRequests": stable.total,
    }
    said = (
        f"canary {canary.rate:.2%} ({canary.hits}/{canary.total}) vs stable {stable.rate:.2%} "
        f"({stable.hits}/{stable.total})"
    )
    if canary.total == 0 or stable.total == 0:
        return Verdict(check.label, "pending", figures, None, f"{said}: no requests yet")
    margin = check.max_increase or 0.0
    if margin == 0:
        table = [[canary.hits, canary.total - canary.hits], [stable.hits, stable.total - stable.hits]]
        p = float(stats.fisher_exact(table, alternative="greater").pvalue)
    else:
        upper = stats.binomtest(stable.hits, stable.total).proportion_ci(1 - alpha, "exact").high
        baseline = min(1.0, upper + margin)
        p = (
            1.0
            if baseline >= 1
            else float(stats.binomtest(canary.hits, canary.total, baseline, "greater").pvalue)
        )
        said += f", allowed +{margin:.2%}"
    if p < alpha:
        return Verdict(check.label, "fail", figures, p, f"{said}: worse ({_p(p)} < {alpha:.2g})")
    if min(canary.total, stable.total) < min_samples:
        return Verdict(check.label, "pending", figures, p, f"{said}: {_samples(canary, stable, min_samples)}")
    return Verdict(check.label, "pass", figures, p, f"{said}: not worse ({_p(p)})")


def latency(
    check: RolloutCheck, canary: Sequence[float], stable: Sequence[float], alpha: float, min_samples: int
) -> Verdict:
    """Latency samples in milliseconds."""
    q = 50 if (check.quantile or "p99") == "p50" else 99
    ratio_allowed = check.max_ratio or 1.2
    if len(canary) == 0 or len(stable) == 0:
        figures = {"canaryRequests": len(canary), "stableRequests": len(stable)}
        return Verdict(check.label, "pending", figures, None, "no latencies yet")
    a, b = np.asarray(canary, dtype=float), np.asarray(stable, dtype=float)
    qa, qb = float(np.percentile(a, q)), float(np.percentile(b, q))
    ratio = qa / qb if qb > 0 else math.inf
    figures = {
        f"canaryP{q}Ms": round(qa, 3),
        f"stableP{q}Ms": round(qb, 3),
        "ratio": round(ratio, 3) if math.isfinite(ratio) else None,
        "canaryRequests": len(a),
        "stableRequests": len(b),
    }
    said = f"p{q} canary {qa:.2f} ms vs stable {qb:.2f} ms ({ratio:.2f}x, allowed {ratio_allowed:g}x)"
    from scipy import stats

    if q == 50:
        p = float(stats.mannwhitneyu(a, ratio_allowed * b, alternative="greater").pvalue)
    else:
        above = int(np.count_nonzero(a > ratio_allowed * qb))
        figures["canaryAboveAllowed"] = above
        said += f", {above}/{len(a)} above {ratio_allowed * qb:.2f} ms"
        p = float(stats.binomtest(above, len(a), 1 - q / 100, "greater").pvalue)
    if p < alpha:
        return Verdict(check.label, "fail", figures, p, f"{said}: slower ({_p(p)} < {alpha:.2g})")
    if min(len(a), len(b)) < min_samples:
        return Verdict(
            check.label, "pending", figures, p, f"{said}: {len(a)}/{len(b)} of {min_samples} samples"
        )
    return Verdict(check.label, "pass", figures, p, f"{said}: not slower than allowed ({_p(p)})")


def agreement(check: RolloutCheck, agreed: Counts, alpha: float, min_samples: int) -> Verdict:
    """`agreed.hits`: mirrored requests whose canary answer agreed with the stable one."""
    from scipy import stats

    floor = check.min_share or 1.0
    figures = {
        "share": round(agreed.rate, 6),
        "agreed": agreed.hits,
        "compared": agreed.total,
        "minShare": floor,
    }
    said = f"{agreed.rate:.1%} of {agreed.total} answers agree (at least {floor:.1%} wanted)"
    if agreed.total == 0:
        return Verdict(check.label, "pending", figures, None, "no mirrored answers compared yet")
    p = float(stats.binomtest(agreed.hits, agreed.total, floor, "less").pvalue) if floor < 1 else None
    if (floor >= 1 and agreed.hits < agreed.total) or (p is not None and p < alpha):
        why = f" ({_p(p)} < {alpha:.2g})" if p is not None else ""
        return Verdict(check.label, "fail", figures, p, f"{said}: they disagree{why}")
    if agreed.total < min_samples:
        return Verdict(check.label, "pending", figures, p, f"{said}: {agreed.total} of {min_samples} samples")
    return Verdict(check.label, "pass", figures, p, said)


def threshold(check: RolloutCheck, value: float | None) -> Verdict:
    """A promql check: the query's value for the canary (None: no data yet)."""
    if value is None or math.isnan(value):
        return Verdict(check.label, "pending", {}, None, "the query returned no data for the canary yet")
    figures = {"value": value, "max": check.max, "min": check.min}
    if check.max is not None and value > check.max:
        return Verdict(check.label, "fail", figures, None, f"{value:g} is above {check.max:g}")
    if check.min is not None and value < check.min:
        return Verdict(check.label, "fail", figures, None, f"{value:g} is below {check.min:g}")
    return Verdict(check.label, "pass", figures, None, f"{value:g} is within bounds")


def _samples(canary: Counts, stable: Counts, wanted: int) -> str:
    return f"{canary.total} canary and {stable.total} stable requests of {wanted} wanted"
