"""The router's pure traffic policies: weighted choice, effective weights, sticky points, the shadow coin."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest

from router.policies.placement import Budget, evictions, pick_host
from router.policies.traffic import (
    effective_weights,
    pick_weighted,
    shadow_has_room,
    sticky_point,
    take_shadow,
)
from tests.servers import ROOT

# -- pick_weighted ---------------------------------------------------------------------------------

SEVENTY_THIRTY = [("a", 70), ("b", 30)]


@pytest.mark.parametrize(
    ("items", "point", "expected"),
    [
        (SEVENTY_THIRTY, 0.0, "a"),
        (SEVENTY_THIRTY, 0.69, "a"),
        (SEVENTY_THIRTY, 0.7, "b"),
        (SEVENTY_THIRTY, 0.999999, "b"),
        ([("a", 1), ("b", 1), ("c", 2)], 0.49, "b"),
        ([("a", 1), ("b", 1), ("c", 2)], 0.5, "c"),
        ([("only", 100)], 0.5, "only"),
        # weight 0 is never chosen, at either end
        ([("zero", 0), ("b", 100)], 0.0, "b"),
        ([("a", 100), ("zero", 0)], 0.999999, "a"),
        ([("a", 50), ("zero", 0), ("c", 50)], 0.5, "c"),
        # weights need not add up to 100
        ([("a", 1), ("b", 3)], 0.3, "b"),
    ],
)
def test_pick_weighted_by_cumulative_interval(
    items: list[tuple[str, int]], point: float, expected: str
) -> None:
    assert pick_weighted(items, point) == expected


@pytest.mark.parametrize("items", [[], [("a", 0)], [("a", 0), ("b", 0)]])
def test_pick_weighted_with_nothing_to_pick_is_none(items: list[tuple[str, int]]) -> None:
    assert pick_weighted(items, 0.5) is None


def test_pick_weighted_with_uniform_points_follows_the_weights() -> None:
    rng = random.Random(7)
    counts = Counter(pick_weighted([("a", 20), ("b", 50), ("c", 30)], rng.random()) for _ in range(20_000))
    assert counts["a"] / 20_000 == pytest.approx(0.2, abs=0.015)
    assert counts["b"] / 20_000 == pytest.approx(0.5, abs=0.015)
    assert counts["c"] / 20_000 == pytest.approx(0.3, abs=0.015)


# -- effective_weights -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "ready", "expected"),
    [
        ([("r1", 70), ("r2", 30)], {"r1", "r2"}, [("r1", 70), ("r2", 30)]),
        # an unready revision's share goes to the others
        ([("r1", 70), ("r2", 30)], {"r1"}, [("r1", 100)]),
        ([("r1", 70), ("r2", 30)], {"r2"}, [("r2", 100)]),
        ([("r1", 50), ("r2", 25), ("r3", 25)], {"r2", "r3"}, [("r2", 50), ("r3", 50)]),
        # in proportion, rounded so that the result still adds up to 100
        ([("r1", 10), ("r2", 20), ("r3", 70)], {"r1", "r2"}, [("r1", 33), ("r2", 67)]),
        ([("a", 1), ("b", 1), ("c", 1)], {"a", "b", "c"}, [("a", 34), ("b", 33), ("c", 33)]),
        # zero weights are dropped; nothing ready is an empty list
        ([("r1", 100), ("r2", 0)], {"r1", "r2"}, [("r1", 100)]),
        ([("r1", 70), ("r2", 30)], set(), []),
        ([("r1", 0)], {"r1"}, []),
        ([], {"r1"}, []),
    ],
)
def test_effective_weights(
    configured: list[tuple[str, int]], ready: set[str], expected: list[tuple[str, int]]
) -> None:
    assert effective_weights(configured, ready) == expected


def test_effective_weights_always_add_up_to_100() -> None:
    rng = random.Random(3)
    for _ in range(2_000):
        names = [f"r{i}" for i in range(rng.randint(1, 7))]
        configured = [(name, rng.randint(0, 100)) for name in names]
        ready = {name for name in names if rng.random() < 0.7}
        result = effective_weights(configured, ready)
        kept = [(n, w) for n, w in configured if n in ready and w > 0]
        if not kept:
            assert result == []
            continue
        assert sum(w for _, w in result) == 100, (configured, ready, result)
        assert [n for n, _ in result] == [n for n, _ in kept]  # order kept
        total = sum(w for _, w in kept)
        for (_, got), (_, weight) in zip(result, kept, strict=True):
            assert abs(got - weight * 100 / total) < 1  # each within rounding of its exact share


# -- sticky_point ----------------------------------------------------------------------------------


def test_sticky_point_is_stable_and_in_range() -> None:
    for key in ("alice", "bob", "", "ünïcödé", "x" * 1000):
        point = sticky_point(key, "svc")
        assert 0.0 <= point < 1.0
        assert sticky_point(key, "svc") == point


def test_sticky_point_depends_on_key_and_salt() -> None:
    assert sticky_point("alice", "svc") != sticky_point("bob", "svc")
    assert sticky_point("alice", "svc") != sticky_point("alice", "other")
    assert sticky_point("alice") == sticky_point("alice", "")


def test_sticky_point_is_the_same_in_another_process() -> None:
    # Unlike Python's salted hash(): a user keeps their variant across restarts and gateways.
    keys = ["alice", "bob", "user-42"]
    code = (
        "from router.policies.traffic import sticky_point; "
        f"print(repr([sticky_point(k, 'svc') for k in {keys!r}]))"
    )
    env = {"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.strip() == repr([sticky_point(k, "svc") for k in keys])


def test_sticky_points_spread_evenly() -> None:
    points = [sticky_point(f"user-{i}", "svc") for i in range(10_000)]
    bins = Counter(int(p * 10) for p in points)
    chi2 = sum((bins[b] - 1_000) ** 2 / 1_000 for b in range(10))
    assert chi2 < 27.88, bins  # chi-square, 9 degrees of freedom, p = 0.001
    shares = Counter(pick_weighted([("control", 50), ("treatment", 50)], p) for p in points)
    assert shares["control"] / 10_000 == pytest.approx(0.5, abs=0.03)


# -- take_shadow -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "point", "expected"),
    [
        (0, 0.0, False),
        (0, 0.5, False),
        (100, 0.0, True),
        (100, 0.999999, True),
        (30, 0.0, True),
        (30, 0.2999, True),
        (30, 0.3, False),
        (30, 0.9, False),
        (1, 0.005, True),
        (1, 0.01, False),
    ],
)
def test_take_shadow(percent: int, point: float, expected: bool) -> None:
    assert take_shadow(percent, point) is expected


def test_take_shadow_mirrors_its_percent() -> None:
    rng = random.Random(11)
    taken = sum(take_shadow(25, rng.random()) for _ in range(20_000))
    assert taken / 20_000 == pytest.approx(0.25, abs=0.015)


@pytest.mark.parametrize(
    ("replicas", "waiting", "expected"),
    [
        (1, 0, True),
        (1, 1, True),
        (1, 2, False),  # a copy would queue behind two others
        (3, 5, True),
        (3, 6, False),
        (0, 0, True),  # scaling from zero: a copy or two wake it
        (0, 1, True),
        (0, 2, False),
    ],
)
def test_shadow_has_room(replicas: int, waiting: int, expected: bool) -> None:
    assert shadow_has_room(replicas, waiting) is expected


# -- multi-model placement ------------------------------------------------------------------------


def test_pick_host_prefers_fewest_models_then_least_busy() -> None:
    assert pick_host([("a", 2, 0), ("b", 1, 5), ("c", 1, 3)]) == "c"
    assert pick_host([("a", 0, 0)]) == "a"


@pytest.mark.parametrize(
    ("held", "budget", "incoming", "evicted"),
    [
        (["m1", "m2"], Budget(max_models=2), "m3", ["m1"]),
        (["m1", "m2"], Budget(max_models=3), "m3", []),
        (["m1", "m2", "m3"], Budget(max_models=2), "m4", ["m1", "m2"]),
        (["m1", "m2"], Budget(max_models=2), "m2", []),  # already held: nothing to make room for
        (["m1", "m2"], Budget(), "m3", []),  # no limits
        (["big", "small"], Budget(memory_bytes=100), "new", ["big"]),  # 60 + 30 + 40 > 100
        (["small"], Budget(memory_bytes=100), "huge", []),  # could never fit: keep what works
    ],
)
def test_evictions_oldest_first_within_budget(
    held: list[str], budget: Budget, incoming: str, evicted: list[str]
) -> None:
    sizes = {"big": 60, "small": 30, "new": 40, "huge": 500}
    assert evictions(held, sizes, budget, incoming) == evicted
