"""Windowed averages of one revision's metric, Knative's `TimedFloat64Buckets` with time passed in.

Samples land in fixed-width time buckets; `average(now, window_s)` averages the buckets of the
trailing window. One `MetricWindow` serves both the stable and the panic window, so it keeps the
buckets of the longest one. As in Knative (`pkg/autoscaler/aggregation/bucketing.go`):

- a gap in the data inside the window counts as zeros;
- a window only partly covered because the data started recently (a new revision, or the first
  sample after a whole window of silence) is averaged over the buckets since the data started;
- buckets after the last sample are not counted: no sample means "not measured", not zero, so the
  collector records an explicit 0 when the revision is idle;
- no sample inside the window at all gives None (Knative returns 0 and a separate "no data"
  error; here the caller turns None into the policy's `NoData`).
"""

from __future__ import annotations

import math

__all__ = ["MetricWindow"]


class MetricWindow:
    """Time-bucketed samples of one metric (the revision's total, e.g. summed concurrency)."""

    def __init__(self, longest_window_s: float, bucket_s: float = 1.0) -> None:
        """Keep enough history to average over `longest_window_s` seconds in `bucket_s` buckets."""
        if bucket_s <= 0 or longest_window_s < bucket_s:
            raise ValueError(f"need 0 < bucket_s ({bucket_s}) <= longest_window_s ({longest_window_s})")
        self.bucket_s = bucket_s
        self.longest_window_s = longest_window_s
        # Two windows back: whether data ran up to a window's start decides its divisor.
        self._keep = 2 * self._buckets(longest_window_s)
        self._sums: dict[int, float] = {}
        self._counts: dict[int, int] = {}
        self._newest: int | None = None

    def record(self, now: float, value: float) -> None:
        """Add a sample taken at `now` (seconds); samples older than the kept history are dropped."""
        index = self._index(now)
        if self._newest is not None and index <= self._newest - self._keep:
            return
        # Knative sums the samples of a bucket because each is one pod's; each sample here is the
        # revision's total already, so two scrapes falling in one bucket are averaged instead.
        self._sums[index] = self._sums.get(index, 0.0) + value
        self._counts[index] = self._counts.get(index, 0) + 1
        if self._newest is None or index > self._newest:
            self._newest = index
            for old in [i for i in self._sums if i <= index - self._keep]:
                del self._sums[old], self._counts[old]

    def average(self, now: float, window_s: float) -> float | None:
        """The mean over the `window_s` seconds up to `now`, or None with no sample in them."""
        if window_s > self.longest_window_s:
            raise ValueError(f"window {window_s}s is longer than the {self.longest_window_s}s kept")
        size = self._buckets(window_s)
        last = self._index(now)
        first = last - size + 1
        inside = sorted(i for i in self._sums if first <= i <= last)
        if not inside:
            return None
        # The data's run started inside the window unless a sample precedes it by less than a
        # window (Knative resets its first-write time after a whole window without writes).
        ran_before = any(inside[0] - size < i < first for i in self._sums)
        start = first if ran_before else inside[0]
        total = sum(self._sums[i] / self._counts[i] for i in inside)
        # Knative floors to 6 digits, so float noise cannot tip a ceil() into one more replica.
        return math.floor(total / (inside[-1] - start + 1) * 1e6) / 1e6

    def __len__(self) -> int:
        """Buckets held: at most two of the longest window's worth."""
        return len(self._sums)

    def _buckets(self, window_s: float) -> int:
        return max(1, math.ceil(window_s / self.bucket_s - 1e-9))

    def _index(self, t: float) -> int:
        return math.floor(t / self.bucket_s)
