"""Leader election, whatever holds the lease: a row in the state database (serving/leader.py, for
gateways sharing a state) or a Kubernetes Lease (serving/operator/kubelease.py, for the operator).

`Elector` owns the campaign: an attempt every `renew_s` seconds while leading (`retry_s` while
not), the callbacks when leadership changes, stepping down when another holder has the lease or
when renewing failed and less than one renewal interval is left, and releasing the lease on a clean
stop. A subclass says how one attempt and a release are made; both block, and run in the elector's
own thread (renewals never queue behind other work), each waited for at most `renew_s` seconds: a
store that hangs must not keep a leader from stepping down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import secrets
import socket
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["Elector", "default_holder"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def default_holder() -> str:
    """This process's identity: host name, pid and a random suffix (a restarted pid is not the same
    holder)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Elector(ABC):
    """Campaigns for one lease until `close()`.

    `on_started_leading` and `on_stopped_leading` are awaited when leadership changes; keep them
    short (start work, do not do it: the next renewal waits for them); an exception in one is
    logged and changes nothing. `clock` (wall-clock seconds, shared with the other holders) and
    `sleep` are for tests.
    """

    def __init__(
        self,
        what: str,
        *,
        holder: str | None,
        ttl_s: float,
        retry_s: float | None,
        on_started_leading: Callable[[], Awaitable[None]] | None,
        on_stopped_leading: Callable[[], Awaitable[None]] | None,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[Any]],
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"the lease's duration must be positive, not {ttl_s}")
        #: the lease, for people (in log lines).
        self.what = what
        self.holder = holder or default_holder()
        self.ttl_s = ttl_s
        #: seconds between two renewals; also the margin a leader keeps before its lease expires.
        self.renew_s = ttl_s / 3
        #: seconds between two attempts while not leading.
        self.retry_s = min(retry_s, self.renew_s) if retry_s is not None else self.renew_s
        #: whether the last attempt reached the lease's store (a follower is "ready" only then).
        self.reached = False
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._clock = clock
        self._sleep = sleep
        self._leading = False
        self._expires = 0.0  # of the lease this elector last wrote
        self._seen_holder: str | None = None
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._call: asyncio.Future[Any] | None = None  # a blocking call, possibly still running
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lease")

    # -- what a lease store does ----------------------------------------------------------------------

    @abstractmethod
    def _attempt(self, now: float) -> tuple[str | None, float]:
        """Take or renew the lease for `ttl_s` from `now` if it is free, expired or ours; (who holds
        it now, until when). Blocking; raises when the store cannot be reached."""

    @abstractmethod
    def _release(self, now: float) -> None:
        """Give the lease up if it is ours, so that a successor takes it at once. Blocking."""

    # -- the campaign ---------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this process leads: false as soon as its lease has less than one renewal interval
        left, even before the loop notices (a stalled event loop)."""
        return self._leading and self._clock() + self.renew_s < self._expires

    async def run(self) -> None:
        """Attempt every `renew_s` (leading) or `retry_s` seconds; returns once `close()` is called.
        Cancelled, it steps down too, but leaves the lease to expire."""
        self._task = task = asyncio.current_task()
        try:
            while not self._closed:
                await self.step()
                await self._sleep(self.renew_s if self._leading else self.retry_s)
        except asyncio.CancelledError:
            if not self._closed:
                raise
            if task is not None:
                task.uncancel()  # close() stopped it: run() returns
        finally:
            if self._leading:
                await self._step_down("the elector stopped", logging.INFO)

    async def step(self) -> bool:
        """One attempt to take or renew the lease, with the callbacks; whether this process leads."""
        try:
            holder, expires = await self._blocking(self._attempt, self._clock())
        except Exception as exc:  # unreachable, timed out, refused: the next attempt may do better
            self.reached = False
            log.warning("%s: cannot reach it: %s", self.what, exc)
            if self._leading and not self.is_leader:
                await self._step_down("its lease could not be renewed before it expires")
            return self.is_leader
        self.reached = True
        if holder == self.holder and self._clock() + self.renew_s < expires:
            self._expires = expires
            if not self._leading:
                self._leading = True
                log.info("%s: %s leads", self.what, self.holder)
                await self._callback(self._on_started)
        elif self._leading:
            await self._step_down(
                f"the lease is held by {holder}" if holder != self.holder else "renewed too late"
            )
        elif holder != self._seen_holder:
            log.info("%s is held by %s: waiting", self.what, holder)
        self._seen_holder = holder
        return self.is_leader

    async def close(self) -> None:
        """Stop campaigning; step down and release the lease, so that a successor takes over at its
        next attempt instead of after the lease's duration."""
        self._closed = True
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            await asyncio.wait({task})
        if self._leading:
            await self._step_down("closing", logging.INFO)
        if self._call is not None and not self._call.done():
            # A renewal still on its way would hold the lease again after the release.
            await asyncio.wait({self._call}, timeout=self.renew_s)
        try:
            await self._blocking(self._release, self._clock())
        except Exception as exc:
            log.warning("%s: not released (it expires in %.0f s): %s", self.what, self.ttl_s, exc)
        self._thread.shutdown(wait=False)

    async def _step_down(self, why: str, level: int = logging.WARNING) -> None:
        self._leading = False
        self._expires = 0.0
        log.log(level, "%s: %s stops leading: %s", self.what, self.holder, why)
        await self._callback(self._on_stopped)

    async def _callback(self, callback: Callable[[], Awaitable[None]] | None) -> None:
        if callback is None:
            return
        try:
            await callback()
        except Exception:
            log.exception("%s: a leadership callback failed", self.what)

    async def _blocking(self, function: Callable[..., _T], *args: Any) -> _T:
        """`function(*args)` in the elector's thread, waited for at most `renew_s` seconds. One call
        at a time (a hung one is not repeated)."""
        if self._call is not None and not self._call.done():
            raise TimeoutError("the previous call has not returned")
        call = asyncio.get_running_loop().run_in_executor(self._thread, function, *args)
        # A call given up on may still fail: its error was logged as the timeout already.
        call.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._call = call
        done, _ = await asyncio.wait({call}, timeout=self.renew_s)
        if not done:
            raise TimeoutError(f"no answer in {self.renew_s:.1f} s")
        return call.result()
