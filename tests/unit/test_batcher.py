"""The dynamic batcher in process, with a fake model call."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from predictors.batcher import DynamicBatcher
from predictors.runtime import RuntimeRequest
from serving.errors import InvalidInput, ModelFailure


class FakeModel:
    """Doubles `x`; records each call's row count; can be told to fail or to hold calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.fail: Exception | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, request: RuntimeRequest) -> dict[str, np.ndarray]:
        await self.gate.wait()
        x = request.inputs["x"]
        self.calls.append(x.shape[0])
        if self.fail is not None:
            raise self.fail
        return {"y": x * 2}


def _request(rows: int, width: int = 2, value: float = 1.0) -> RuntimeRequest:
    return RuntimeRequest({"x": np.full((rows, width), value, dtype=np.float32)})


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


async def test_concurrent_requests_are_merged_and_split_back(model: FakeModel) -> None:
    batcher = DynamicBatcher(model, max_batch_size=8, max_latency_s=0.05)
    requests = [_request(rows, value=i) for i, rows in enumerate([1, 2, 3])]
    results = await asyncio.gather(*(batcher.submit(r) for r in requests))
    assert model.calls == [6]
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request.inputs["x"] * 2)
    await batcher.close()


async def test_a_full_batch_goes_without_waiting_for_the_latency(model: FakeModel) -> None:
    batcher = DynamicBatcher(model, max_batch_size=4, max_latency_s=30.0)
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(_request(1)) for _ in range(4))), 5)
    assert len(results) == 4
    assert model.calls == [4]
    await batcher.close()


async def test_batches_never_exceed_the_maximum(model: FakeModel) -> None:
    batcher = DynamicBatcher(model, max_batch_size=4, max_latency_s=0.01)
    await asyncio.gather(*(batcher.submit(_request(rows)) for rows in [3, 2, 1, 2, 4, 1]))
    assert sum(model.calls) == 13
    assert max(model.calls) <= 4
    await batcher.close()


async def test_a_request_larger_than_the_maximum_runs_alone(model: FakeModel) -> None:
    batcher = DynamicBatcher(model, max_batch_size=4, max_latency_s=0.01)
    result = await batcher.submit(_request(9))
    assert result["y"].shape == (9, 2)
    assert model.calls == [9]
    await batcher.close()


async def test_a_lone_request_waits_at_most_the_latency(model: FakeModel) -> None:
    batcher = DynamicBatcher(model, max_batch_size=64, max_latency_s=0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await batcher.submit(_request(1))
    assert loop.time() - started < 1.0
    assert model.calls == [1]
    await batcher.close()


async def test_different_shapes_are_not_merged(model: FakeModel) -> None:
    batcher = DynamicBatcher(model, max_batch_size=16, max_latency_s=0.02)
    narrow = [batcher.submit(_request(1, width=2)) for _ in range(3)]
    wide = [batcher.submit(_request(1, width=5)) for _ in range(2)]
    results = await asyncio.gather(*narrow, *wide)
    assert sorted(model.calls) == [2, 3]
    assert [r["y"].shape[1] for r in results] == [2, 2, 2, 5, 5]
    await batcher.close()


async def test_different_parameters_are_not_merged(model: FakeModel) -> None:
    batcher = DynamicBatcher(model, max_batch_size=16, max_latency_s=0.02)
    a = RuntimeRequest({"x": np.ones((1, 2), np.float32)}, parameters={"mode": "a"})
    b = RuntimeRequest({"x": np.ones((1, 2), np.float32)}, parameters={"mode": "b"})
    await asyncio.gather(batcher.submit(a), batcher.submit(b))
    assert model.calls == [1, 1]
    await batcher.close()


async def test_a_failing_batch_fails_every_request_in_it(model: FakeModel) -> None:
    model.fail = ValueError("boom")
    batcher = DynamicBatcher(model, max_batch_size=8, max_latency_s=0.02)
    results = await asyncio.gather(*(batcher.submit(_request(1)) for _ in range(5)), return_exceptions=True)
    assert model.calls == [5]
    assert all(isinstance(r, ValueError) and str(r) == "boom" for r in results)
    model.fail = None
    assert (await batcher.submit(_request(1)))["y"].shape == (1, 2)
    await batcher.close()


async def test_wrong_output_rows_fail_the_batch(model: FakeModel) -> None:
    async def truncating(request: RuntimeRequest) -> dict[str, np.ndarray]:
        return {"y": request.inputs["x"][:1]}

    batcher = DynamicBatcher(truncating, max_batch_size=8, max_latency_s=0.02)
    results = await asyncio.gather(*(batcher.submit(_request(1)) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ModelFailure) and "one row per input row" in r.message for r in results)
    await batcher.close()


async def test_inputs_with_different_batch_sizes_are_refused(model: FakeModel) -> None:
    batcher = DynamicBatcher(model, max_batch_size=8, max_latency_s=0.02)
    request = RuntimeRequest({"x": np.ones((2, 2), np.float32), "z": np.ones((3, 2), np.float32)})
    with pytest.raises(InvalidInput, match="same first"):
        await batcher.submit(request)
    await batcher.close()


async def test_an_abandoned_request_is_not_computed(model: FakeModel) -> None:
    model.gate.clear()
    batcher = DynamicBatcher(model, max_batch_size=1, max_latency_s=0.0)
    first = asyncio.ensure_future(batcher.submit(_request(1)))
    await asyncio.sleep(0.01)  # the first call now holds the only batch slot
    abandoned = asyncio.ensure_future(batcher.submit(_request(2)))
    await asyncio.sleep(0.01)
    abandoned.cancel()
    model.gate.set()
    await first
    await asyncio.sleep(0.01)
    assert model.calls == [1]
    await batcher.close()


async def test_close_fails_queued_requests(model: FakeModel) -> None:
    model.gate.clear()
    batcher = DynamicBatcher(model, max_batch_size=1, max_latency_s=0.0)
    running = asyncio.ensure_future(batcher.submit(_request(1)))
    await asyncio.sleep(0.01)
    queued = asyncio.ensure_future(batcher.submit(_request(1)))
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0.01)
    model.gate.set()
    await closing
    assert (await running)["y"].shape == (1, 2)
    with pytest.raises(ModelFailure, match="unloaded"):
        await queued


async def test_the_observer_sees_rows_queue_and_compute_times(model: FakeModel) -> None:
    seen: list[tuple[int, list[float], float]] = []
    batcher = DynamicBatcher(
        model, max_batch_size=8, max_latency_s=0.02, observer=lambda r, q, c: seen.append((r, q, c))
    )
    await asyncio.gather(batcher.submit(_request(2)), batcher.submit(_request(3)))
    assert len(seen) == 1
    rows, queue, compute = seen[0]
    assert rows == 5 and len(queue) == 2 and all(q >= 0 for q in queue) and compute >= 0
    await batcher.close()
