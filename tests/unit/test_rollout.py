"""The rollout policy (serving/controller/rollout.py), pure: from revisions, which are ready, the rollout
pointers and `canaryTrafficPercent`, the new pointers and traffic; then promote and rollback."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.controller.rollout import Plan, plan, promote, rollback
from serving.store import Rollout, Store

R1, R2, R3 = "iris-predictor-00001", "iris-predictor-00002", "iris-predictor-00003"


# -- first rollout ----------------------------------------------------------------------------------------


def test_nothing_ready_yet_has_no_traffic() -> None:
    result = plan([R1], set(), Rollout(), None)
    assert result == Plan(Rollout(), (), None)


def test_first_ready_revision_is_rolled_out_with_all_traffic() -> None:
    result = plan([R1], {R1}, Rollout(), None)
    assert result.rollout == Rollout(latest=R1)
    assert result.traffic == ((R1, 100),)
    assert result.latest_ready == R1
    assert result.changes and R1 in result.changes[0]


def test_first_rollout_ignores_canary_percent() -> None:
    # With nothing rolled out yet there is nothing to split with.
    assert plan([R1], {R1}, Rollout(), 30).traffic == ((R1, 100),)


def test_first_rollout_takes_the_newest_ready_revision() -> None:
    result = plan([R1, R2], {R1, R2}, Rollout(), None)
    assert result.rollout == Rollout(latest=R2)
    assert result.traffic == ((R2, 100),)


def test_rolled_out_revision_that_no_longer_exists_starts_over() -> None:
    result = plan([R2], {R2}, Rollout(latest=R1), None)
    assert result.rollout == Rollout(latest=R2)
    assert result.traffic == ((R2, 100),)


# -- automatic rollout (no canary) ------------------------------------------------------------------------


def test_new_revision_gets_nothing_until_ready() -> None:
    result = plan([R1, R2], {R1}, Rollout(latest=R1), None)
    assert result.rollout == Rollout(latest=R1)
    assert result.traffic == ((R1, 100),)
    assert result.latest_ready == R1
    assert result.changes == ()


def test_ready_new_revision_is_rolled_out_at_once() -> None:
    result = plan([R1, R2], {R1, R2}, Rollout(latest=R1), None)
    assert result.rollout == Rollout(latest=R2, previous=R1)
    assert result.traffic == ((R2, 100),)
    assert result.latest_ready == R2
    assert result.changes and R2 in result.changes[0] and R1 in result.changes[0]


def test_rollout_even_when_the_old_revision_is_gone_unready() -> None:
    result = plan([R1, R2], {R2}, Rollout(latest=R1), None)
    assert result.rollout == Rollout(latest=R2, previous=R1)
    assert result.traffic == ((R2, 100),)


def test_canary_100_is_a_plain_rollout() -> None:
    result = plan([R1, R2], {R1, R2}, Rollout(latest=R1), 100)
    assert result.rollout == Rollout(latest=R2, previous=R1)
    assert result.traffic == ((R2, 100),)


def test_settled_rollout_is_stable() -> None:
    rollout = Rollout(latest=R2, previous=R1)
    result = plan([R1, R2], {R1, R2}, rollout, None)
    assert result.rollout == rollout
    assert result.traffic == ((R2, 100),)
    assert result.changes == ()


# -- canary -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "traffic"),
    [
        (30, ((R1, 70), (R2, 30))),
        (10, ((R1, 90), (R2, 10))),
        (99, ((R1, 1), (R2, 99))),
        (0, ((R1, 100),)),  # a running canary with no traffic (yet)
    ],
)
def test_canary_splits_between_rolled_out_and_newest_ready(
    percent: int, traffic: tuple[tuple[str, int], ...]
) -> None:
    result = plan([R1, R2], {R1, R2}, Rollout(latest=R1), percent)
    assert result.traffic == traffic
    assert result.rollout == Rollout(latest=R1)  # a canary is not rolled out until promoted
    assert result.latest_ready == R2
    assert sum(p for _, p in result.traffic) == 100


def test_unready_canary_gets_no_traffic() -> None:
    result = plan([R1, R2], {R1}, Rollout(latest=R1), 30)
    assert result.traffic == ((R1, 100),)
    assert result.latest_ready == R1
    assert result.rollout == Rollout(latest=R1)


def test_canary_goes_to_the_newest_ready_revision() -> None:
    # R3 is not ready yet: R2 (ready) is the canary meanwhile.
    result = plan([R1, R2, R3], {R1, R2}, Rollout(latest=R1), 20)
    assert result.traffic == ((R1, 80), (R2, 20))
    result = plan([R1, R2, R3], {R1, R2, R3}, Rollout(latest=R1), 20)
    assert result.traffic == ((R1, 80), (R3, 20))
    assert result.latest_ready == R3


def test_canary_after_promotion_splits_with_the_promoted_revision() -> None:
    result = plan([R1, R2, R3], {R2, R3}, Rollout(latest=R2, previous=R1), 25)
    assert result.traffic == ((R2, 75), (R3, 25))


# -- pinned (after a rollback) ----------------------------------------------------------------------------


def test_rollback_pins_all_traffic_to_the_previous_revision() -> None:
    pinned = rollback(Rollout(latest=R2, previous=R1))
    assert pinned == Rollout(latest=R1, previous=R2, pinned=True)
    for canary in (None, 30, 100):
        result = plan([R1, R2], {R1, R2}, pinned, canary)
        assert result.traffic == ((R1, 100),)
        assert result.rollout == pinned
        assert result.latest_ready == R2
        assert result.changes == ()


def test_new_revision_clears_the_pin(tmp_path: Path) -> None:
    # The store clears the pin when it records a new revision (a spec change after a rollback).
    store = Store(tmp_path / "state.db")
    try:
        for key in ("k1", "k2"):
            store.add_revision("iris", "predictor", key, {})
        store.set_rollout("iris", "predictor", rollback(Rollout(latest=R2, previous=R1)))
        assert store.rollout("iris", "predictor").pinned
        store.add_revision("iris", "predictor", "k3", {})
        unpinned = store.rollout("iris", "predictor")
        assert unpinned == Rollout(latest=R1, previous=R2)
    finally:
        store.close()
    result = plan([R1, R2, R3], {R1, R2, R3}, unpinned, None)
    assert result.rollout == Rollout(latest=R3, previous=R1)
    assert result.traffic == ((R3, 100),)


# -- promote and rollback ---------------------------------------------------------------------------------


def test_promote_rolls_out_the_canary() -> None:
    assert promote(Rollout(latest=R1), R2) == Rollout(latest=R2, previous=R1)
    assert promote(Rollout(latest=R1, previous="older"), R2) == Rollout(latest=R2, previous=R1)


def test_promote_after_rollback_rolls_the_newest_out_again() -> None:
    pinned = Rollout(latest=R1, previous=R2, pinned=True)
    assert promote(pinned, R2) == Rollout(latest=R2, previous=R1)
    result = plan([R1, R2], {R1, R2}, promote(pinned, R2), 30)
    assert result.traffic == ((R2, 100),)


def test_promote_of_a_pinned_revision_unpins_it() -> None:
    pinned = Rollout(latest=R1, previous=R2, pinned=True)
    assert promote(pinned, R1) == Rollout(latest=R1, previous=R2)


def test_promote_with_nothing_ready_is_refused() -> None:
    with pytest.raises(ValueError, match="no revision is ready"):
        promote(Rollout(latest=R1), None)


def test_promote_of_what_already_takes_all_traffic_is_refused() -> None:
    with pytest.raises(ValueError, match="already takes all traffic"):
        promote(Rollout(latest=R2, previous=R1), R2)


def test_rollback_without_a_previous_revision_is_refused() -> None:
    with pytest.raises(ValueError, match="no previous"):
        rollback(Rollout(latest=R1))
    with pytest.raises(ValueError, match="no previous"):
        rollback(Rollout())


def test_rollback_during_a_canary_withdraws_it() -> None:
    current = Rollout(latest=R1)
    withdrawn = rollback(current, canary=R2)
    assert withdrawn == Rollout(latest=R1, pinned=True)
    result = plan([R1, R2], {R1, R2}, withdrawn, 30)
    assert result.traffic == ((R1, 100),)
    # Once withdrawn, a second rollback goes to the previous revision (here: there is none).
    with pytest.raises(ValueError, match="no previous"):
        rollback(withdrawn, canary=None)
