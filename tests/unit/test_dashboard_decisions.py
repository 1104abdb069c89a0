"""The autoscaler's `Scaled` events read back as the chart's decision markers."""

from __future__ import annotations

import pytest

from serving.dashboard.routes import _decision


@pytest.mark.parametrize(
    ("message", "direction", "start", "end"),
    [
        ("m-1: concurrency 150 per replica, target 70 (100 x 70%): 1 -> 3 replicas", "up", 1, 3),
        (
            "m-1: panic (2.1 per replica over the last 6s): concurrency 2.1 per replica, target 0.7 "
            "(1 x 70%): 1 -> 2 replicas; bounded to [1, 2]",
            "up",
            1,
            2,
        ),
        ("m-1: cpu 10% per replica, target 60%: 4 -> 2 replicas; halving at most", "down", 4, 2),
        ("m-1: requests wait at zero: 0 -> 1", "up", 0, 1),
        ("m-1: no requests for 63s: scale to zero", "down", None, 0),
        ("m-1: no requests seen: scale to zero", "down", None, 0),
    ],
)
def test_a_scaled_event_becomes_a_marker_with_its_reason(
    message: str, direction: str, start: int | None, end: int
) -> None:
    marker = _decision({"time": 12.5, "message": message})
    assert marker == {
        "t": 12.5,
        "revision": "m-1",
        "direction": direction,
        "from": start,
        "to": end,
        "reason": message.removeprefix("m-1: "),
    }


def test_a_message_without_a_change_is_no_marker() -> None:
    assert _decision({"time": 1.0, "message": "m-1: concurrency 1 per replica: holds 2 replicas"}) is None
