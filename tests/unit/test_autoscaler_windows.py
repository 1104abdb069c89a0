"""MetricWindow: Knative's bucket averaging on a fake clock (times are plain seconds)."""

from __future__ import annotations

import pytest

from autoscaler.windows import MetricWindow


def window_with(samples: dict[float, float], longest_s: float = 60, bucket_s: float = 1.0) -> MetricWindow:
    window = MetricWindow(longest_s, bucket_s)
    for t, value in samples.items():
        window.record(t, value)
    return window


def test_a_constant_metric_averages_to_itself() -> None:
    window = window_with({t: 10.0 for t in range(120)})
    assert window.average(119, 60) == 10
    assert window.average(119, 6) == 10


def test_stable_and_panic_windows_from_the_same_samples() -> None:
    window = window_with({t: (100.0 if t >= 54 else 10.0) for t in range(60)})
    assert window.average(59, 6) == 100  # the last six seconds
    assert window.average(59, 60) == 19  # (54 * 10 + 6 * 100) / 60


def test_a_new_series_is_averaged_over_the_seconds_it_has() -> None:
    window = window_with({t: 30.0 for t in range(5)})
    assert window.average(4, 60) == 30  # not 30 * 5 / 60: five buckets of data, not sixty


def test_a_gap_inside_the_window_counts_as_zeros() -> None:
    samples = {t: 10.0 for t in range(10)} | {t: 10.0 for t in range(20, 30)}
    assert window_with(samples, longest_s=30).average(29, 30) == pytest.approx(200 / 30, abs=1e-6)


def test_seconds_after_the_last_sample_are_not_counted() -> None:
    # No sample means "not measured", not zero: the average is over the window up to the last one.
    window = window_with({t: 10.0 for t in range(30)}, longest_s=30)
    assert window.average(40, 30) == 10


def test_data_running_up_to_the_window_counts_its_leading_gap() -> None:
    # Samples until t=9, none for 15 s, then again: the run never broke for a whole window, so
    # the seconds 16..24 opening the window at t=45 are zeros, as Knative counts them.
    samples = {t: 10.0 for t in range(10)} | {t: 10.0 for t in range(25, 46)}
    assert window_with(samples, longest_s=30).average(45, 30) == 7  # 21 * 10 / 30


def test_after_a_whole_window_of_silence_the_average_restarts() -> None:
    samples = {t: 50.0 for t in range(10)} | {50: 4.0, 51: 6.0}
    assert window_with(samples, longest_s=30).average(51, 30) == 5


def test_no_sample_in_the_window_is_none() -> None:
    window = window_with({t: 10.0 for t in range(5)})
    assert window.average(100, 60) is None
    assert window.average(30, 6) is None  # the panic window can be empty while the stable one is not
    assert window.average(30, 60) == 10
    assert MetricWindow(60).average(0, 60) is None


def test_samples_in_one_bucket_are_averaged() -> None:
    # Each sample is already the revision's total: two scrapes in a second must not add up.
    window = window_with({10.0: 4.0, 10.5: 6.0, 11.2: 5.0})
    assert window.average(11.9, 6) == 5


def test_zero_is_a_sample() -> None:
    window = window_with({t: 0.0 for t in range(10)})
    assert window.average(9, 6) == 0


def test_old_buckets_are_dropped() -> None:
    window = window_with({float(t): 1.0 for t in range(1000)}, longest_s=10)
    assert len(window) <= 20
    window.record(5, 1000.0)  # far older than what is kept: ignored
    assert window.average(999, 10) == 1
    assert len(window) <= 20


def test_a_late_sample_within_the_window_still_counts() -> None:
    window = window_with({0: 10.0, 1: 10.0, 3: 10.0})
    window.record(2.5, 10.0)
    assert window.average(3, 6) == 10


def test_sub_second_buckets() -> None:
    window = window_with({t / 2: 8.0 for t in range(20)}, longest_s=5, bucket_s=0.5)
    assert window.average(9.5, 1) == 8
    window.record(10.0, 0.0)
    assert window.average(10.0, 1) == 4  # two half-second buckets: 8 and 0


def test_averages_are_floored_to_six_digits_like_knative() -> None:
    window = window_with({0: 70.0000000001})
    assert window.average(0, 6) == 70


def test_a_window_longer_than_kept_is_refused() -> None:
    with pytest.raises(ValueError, match="longer"):
        MetricWindow(60).average(0, 61)
    with pytest.raises(ValueError):
        MetricWindow(0.5, bucket_s=1.0)
