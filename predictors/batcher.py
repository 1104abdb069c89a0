"""Dynamic batching: concurrent requests merged along the batch axis.

One queue per model and one future per request. The batching task waits for the oldest request's
batch to fill up to `max_batch_size` rows, or for `max_latency` after that request arrived,
whichever comes first, then runs the merged batch and hands each caller exactly its rows. Only
requests with the same input names, datatypes, non-batch dimensions, requested outputs and
parameters are merged; others wait for a batch of their own kind. A failed batch sets the error on
every one of its futures, so no caller hangs.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import numpy as np
import orjson

from predictors.runtime import RuntimeRequest
from serving.errors import InvalidInput, ModelFailure

__all__ = ["BatchObserver", "DynamicBatcher"]

Outputs = dict[str, np.ndarray]
RunBatch = Callable[[RuntimeRequest], Awaitable[Outputs]]
#: called once per batch with (rows in the batch, seconds each request waited, seconds the model ran).
BatchObserver = Callable[[int, list[float], float], None]


@dataclass(slots=True, eq=False)
class _Pending:
    request: RuntimeRequest
    rows: int
    key: Hashable
    future: asyncio.Future[Outputs]
    enqueued: float


def batch_key(request: RuntimeRequest) -> Hashable:
    """Requests with equal keys can be concatenated along axis 0."""
    inputs = tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in request.inputs.items()))
    outputs = tuple(request.outputs) if request.outputs is not None else None
    params = orjson.dumps(request.parameters, option=orjson.OPT_SORT_KEYS) if request.parameters else b""
    return inputs, outputs, params


def batch_rows(request: RuntimeRequest) -> int:
    sizes = {a.shape[0] if a.ndim else -1 for a in request.inputs.values()}
    if len(sizes) != 1 or -1 in sizes:
        raise InvalidInput("with batching on, every input needs the same first (batch) dimension")
    return sizes.pop()


class DynamicBatcher:
    def __init__(
        self,
        run: RunBatch,
        max_batch_size: int,
        max_latency_s: float,
        max_concurrent_batches: int = 1,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._run = run
        self._max_rows = max_batch_size
        self._max_latency = max(0.0, max_latency_s)
        self._slots = asyncio.Semaphore(max(1, max_concurrent_batches))
        self._observer = observer
        self._clock = clock
        self._queue: deque[_Pending] = deque()
        self._rows: dict[Hashable, int] = {}
        self._arrived = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="dynamic-batcher")

    async def submit(self, request: RuntimeRequest) -> Outputs:
        rows = batch_rows(request)
        item = _Pending(
            request, rows, batch_key(request), asyncio.get_running_loop().create_future(), self._clock()
        )
        self._queue.append(item)
        self._rows[item.key] = self._rows.get(item.key, 0) + rows
        self._arrived.set()
        return await item.future

    async def close(self) -> None:
        """Stop batching; queued requests fail, running batches finish."""
        self._task.cancel()
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(ModelFailure("the model was unloaded"))
        self._queue.clear()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await self._slots.acquire()
            try:
                await self._wait_for_batch()
                batch = self._take_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _wait_for_batch(self) -> None:
        self._drop_abandoned()
        if not self._queue:
            return
        head = self._queue[0]
        deadline = head.enqueued + self._max_latency
        while self._rows.get(head.key, 0) < self._max_rows:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _drop_abandoned(self) -> None:
        # Callers that gave up (timeout, disconnect) cancel their future; don't compute for them.
        while self._queue and self._queue[0].future.done():
            self._forget(self._queue.popleft())

    def _forget(self, item: _Pending) -> None:
        left = self._rows[item.key] - item.rows
        if left:
            self._rows[item.key] = left
        else:
            del self._rows[item.key]

    def _take_batch(self) -> list[_Pending]:
        if not self._queue:
            return []
        key = self._queue[0].key
        batch: list[_Pending] = []
        kept: deque[_Pending] = deque()
        rows = 0
        for item in self._queue:
            if item.future.done():
                self._forget(item)
            elif item.key == key and (not batch or rows + item.rows <= self._max_rows):
                batch.append(item)
                rows += item.rows
                self._forget(item)
            else:
                kept.append(item)
        self._queue = kept
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        started = self._clock()
        try:
            request = _merge(batch)
            outputs = await self._run(request)
            finished = self._clock()
            _split(batch, outputs)
        except BaseException as exc:  # every caller must hear about it, whatever it was
            error = exc if isinstance(exc, Exception) else ModelFailure("the batch was cancelled")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._slots.release()
        if self._observer is not None:
            self._observer(
                sum(item.rows for item in batch),
                [started - item.enqueued for item in batch],
                finished - started,
            )


def _merge(batch: list[_Pending]) -> RuntimeRequest:
    first = batch[0].request
    if len(batch) == 1:
        return first
    inputs = {name: np.concatenate([item.request.inputs[name] for item in batch]) for name in first.inputs}
    # Headers differ per caller, so a merged batch carries none.
    return RuntimeRequest(inputs=inputs, outputs=first.outputs, parameters=first.parameters)


def _split(batch: list[_Pending], outputs: Outputs) -> None:
    total = sum(item.rows for item in batch)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ModelFailure(
                f"output '{name}' has shape {list(array.shape)}, but the batch had {total} rows; "
                "a batched model must return one row per input row"
            )
    if len(batch) == 1:
        batch[0].future.set_result(outputs)
        return
    offset = 0
    for item in batch:
        end = offset + item.rows
        if not item.future.done():
            item.future.set_result({name: array[offset:end] for name, array in outputs.items()})
        offset = end
