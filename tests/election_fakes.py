"""Fakes for the leader electors' tests (serving/election.py): a clock the elector's sleeps move,
and callbacks that record what the elector told them."""

from __future__ import annotations

import asyncio


class FakeTime:
    """`clock` for the elector; its `sleep` moves the clock on instead of waiting."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class Recorder:
    """A leader's callbacks: what it was told, in order; `fail` makes `started` raise."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    async def started(self) -> None:
        self.calls.append("started")
        if self.fail:
            raise RuntimeError("boom")

    async def stopped(self) -> None:
        self.calls.append("stopped")
