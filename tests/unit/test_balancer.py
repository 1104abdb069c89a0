"""The per-revision replica pool: power of two choices, the `containerConcurrency` limit and its FIFO
queue, overload and deadlines, endpoints coming and going, and quarantine. No servers: endpoints are
just names, and the event loop is the only clock."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from router.balancer import Endpoint, Pool, choose
from serving.errors import InferenceTimeout, ServerUnavailable


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


def pool_of(*ids: str, concurrency: int = 0, queue_limit: int = 1000, seed: int = 0) -> Pool:
    pool = Pool("rev-00001", concurrency, queue_limit, random.Random(seed))
    pool.update((i, f"http://{i}", f"{i}:9000") for i in ids)
    return pool


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- choosing --------------------------------------------------------------------------------------


def test_choose_takes_the_less_loaded_of_two() -> None:
    idle, busy = (
        Endpoint("idle", "http://idle", outstanding=0),
        Endpoint("busy", "http://busy", outstanding=3),
    )
    for seed in range(50):
        assert choose([idle, busy], random.Random(seed)) is idle
        assert choose([busy, idle], random.Random(seed)) is idle


def test_choose_never_takes_the_busiest_of_several() -> None:
    loads = [Endpoint(f"e{n}", f"http://e{n}", outstanding=n) for n in (0, 1, 2, 9)]
    rng = random.Random(1)
    picked = Counter(choose(loads, rng).id for _ in range(3_000))
    assert "e9" not in picked
    # e0 wins every pair it is drawn in (half of them), e1 one in three, e2 one in six.
    assert picked["e0"] / 3_000 == pytest.approx(1 / 2, abs=0.04)
    assert picked["e1"] / 3_000 == pytest.approx(1 / 3, abs=0.04)
    assert picked["e2"] / 3_000 == pytest.approx(1 / 6, abs=0.04)


async def test_acquire_spreads_requests_by_outstanding_count() -> None:
    pool = pool_of("a", "b")
    taken = [await pool.acquire(deadline()) for _ in range(10)]
    assert Counter(e.id for e in taken) == {"a": 5, "b": 5}
    assert pool.outstanding == 10

    # Free up `a`: the next requests go there until the counts are level again.
    freed = [e for e in taken if e.id == "a"][:4]
    for endpoint in freed:
        pool.release(endpoint)
    again = [await pool.acquire(deadline()) for _ in range(4)]
    assert [e.id for e in again] == ["a"] * 4
    assert pool.outstanding == 10


async def test_acquire_returns_the_endpoint_with_its_addresses() -> None:
    pool = pool_of("a")
    endpoint = await pool.acquire(deadline())
    assert (endpoint.id, endpoint.http_url, endpoint.grpc_target) == ("a", "http://a", "a:9000")
    assert endpoint.outstanding == 1
    pool.release(endpoint)
    assert endpoint.outstanding == 0


# -- containerConcurrency and the queue ------------------------------------------------------------


async def test_concurrency_limit_queues_in_arrival_order() -> None:
    pool = pool_of("a", concurrency=1)
    first = await pool.acquire(deadline())
    order: list[int] = []

    async def request(n: int) -> Endpoint:
        endpoint = await pool.acquire(deadline())
        order.append(n)
        return endpoint

    waiting = []
    for n in range(3):
        waiting.append(asyncio.create_task(request(n)))
        await settle()
    assert pool.queued == 3 and not any(t.done() for t in waiting)
    assert first.outstanding == 1

    holder = first
    for n in range(3):
        pool.release(holder)
        await settle()
        assert order == list(range(n + 1))  # exactly one more, the one that waited longest
        assert pool.queued == 2 - n
        holder = waiting[n].result()
        assert holder.outstanding == 1  # never more than the limit
    pool.release(holder)
    assert pool.outstanding == 0


async def test_concurrency_limit_is_per_replica() -> None:
    pool = pool_of("a", "b", concurrency=2)
    taken = [await pool.acquire(deadline()) for _ in range(4)]
    assert Counter(e.id for e in taken) == {"a": 2, "b": 2}
    fifth = asyncio.create_task(pool.acquire(deadline()))
    await settle()
    assert not fifth.done() and pool.queued == 1
    pool.release(taken[3])
    await settle()
    assert fifth.done() and fifth.result() is taken[3]


async def test_a_woken_request_is_not_overtaken_by_a_later_one() -> None:
    pool = pool_of("a", concurrency=1)
    holder = await pool.acquire(deadline())
    served: list[str] = []
    go = asyncio.Event()

    async def request(name: str, wait_first: bool = False) -> Endpoint:
        if wait_first:
            await go.wait()
        endpoint = await pool.acquire(deadline(1.0))
        served.append(name)
        return endpoint

    late = asyncio.create_task(request("late", wait_first=True))
    await settle()
    early = asyncio.create_task(request("early"))
    await settle()
    assert pool.queued == 1

    # `late` becomes runnable just before the slot frees; it still arrives after `early` queued.
    go.set()
    pool.release(holder)
    await settle()
    assert served == ["early"], "a request that arrived later took the freed slot first"
    pool.release(early.result())
    await settle()
    assert served == ["early", "late"]
    pool.release(late.result())


async def test_full_queue_answers_unavailable_at_once() -> None:
    pool = pool_of("a", concurrency=1, queue_limit=2)
    holder = await pool.acquire(deadline())
    queued = [asyncio.create_task(pool.acquire(deadline())) for _ in range(2)]
    await settle()
    assert pool.queued == 2

    with pytest.raises(ServerUnavailable, match="rev-00001"):
        await asyncio.wait_for(pool.acquire(deadline()), 0.5)
    assert pool.queued == 2

    pool.release(holder)
    await settle()
    assert queued[0].done() and pool.queued == 1
    for task in queued[1:]:
        task.cancel()
    await asyncio.gather(*queued[1:], return_exceptions=True)


async def test_deadline_while_queued_times_out_and_leaves_the_queue() -> None:
    pool = pool_of("a", concurrency=1)
    holder = await pool.acquire(deadline())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InferenceTimeout, match="rev-00001"):
        await pool.acquire(deadline(0.05))
    assert 0.04 <= loop.time() - started < 1.0
    assert pool.queued == 0
    pool.release(holder)
    assert (await pool.acquire(deadline())) is holder


async def test_deadline_with_no_replica_says_none_is_ready() -> None:
    pool = Pool("rev-00001")
    with pytest.raises(InferenceTimeout, match="ready replica"):
        await pool.acquire(deadline(0.05))
    assert pool.queued == 0


async def test_cancelled_request_leaves_the_queue() -> None:
    pool = pool_of("a", concurrency=1)
    holder = await pool.acquire(deadline())
    task = asyncio.create_task(pool.acquire(deadline()))
    await settle()
    assert pool.queued == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert pool.queued == 0
    pool.release(holder)
    assert pool.outstanding == 0


# -- endpoints coming and going --------------------------------------------------------------------


async def test_request_waits_for_an_endpoint_to_appear() -> None:
    pool = Pool("rev-00001", 1)
    task = asyncio.create_task(pool.acquire(deadline()))
    await asyncio.sleep(0.02)
    assert not task.done() and pool.queued == 1

    pool.update([("r-1", "http://r-1", None)])
    endpoint = await asyncio.wait_for(task, 1.0)
    assert endpoint.id == "r-1" and endpoint.outstanding == 1
    assert pool.size == 1 and pool.queued == 0


async def test_every_waiter_is_woken_when_unlimited_endpoints_appear() -> None:
    pool = Pool("rev-00001")
    tasks = [asyncio.create_task(pool.acquire(deadline())) for _ in range(5)]
    await settle()
    pool.update([("r-1", "http://r-1", None), ("r-2", "http://r-2", None)])
    taken = await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    assert sorted(Counter(e.id for e in taken).values()) == [2, 3]


async def test_update_keeps_counts_of_staying_endpoints_and_marks_removed_ones() -> None:
    pool = pool_of("a", "b")
    a = await pool.acquire(deadline(), exclude=frozenset({"b"}))
    b = await pool.acquire(deadline(), exclude=frozenset({"a"}))
    pool.update([("a", "http://a", "a:9000"), ("c", "http://c", None)])
    assert pool.size == 2
    assert not a.removed and b.removed
    assert pool.outstanding == 1  # b's request is no longer counted in the pool

    again = await pool.acquire(deadline())
    assert again.id == "c"  # a still has one outstanding
    pool.release(b)  # answering on a removed endpoint is harmless
    assert b.outstanding == 0

    # Same id, new address (a restarted replica): a new endpoint with fresh counts.
    pool.update([("a", "http://a-new", None), ("c", "http://c", None)])
    fresh = await pool.acquire(deadline(), exclude=frozenset({"c"}))
    assert fresh is not a and fresh.http_url == "http://a-new" and fresh.outstanding == 1


async def test_excluded_endpoints_are_not_chosen() -> None:
    pool = pool_of("a", "b", "c")
    for _ in range(10):
        endpoint = await pool.acquire(deadline(), exclude=frozenset({"a", "b"}))
        assert endpoint.id == "c"
    with pytest.raises(InferenceTimeout):
        await pool.acquire(deadline(0.05), exclude=frozenset({"a", "b", "c"}))


# -- quarantine ------------------------------------------------------------------------------------


async def test_quarantined_endpoint_gets_no_new_requests_for_a_while() -> None:
    pool = pool_of("a", "b")
    a = next(e for e in [await pool.acquire(deadline()) for _ in range(2)] if e.id == "a")
    pool.release(a)
    pool.quarantine(a, 0.1)
    during = [await pool.acquire(deadline()) for _ in range(10)]
    assert {e.id for e in during} == {"b"}
    await asyncio.sleep(0.15)
    assert (await pool.acquire(deadline())).id == "a"


async def test_request_waits_out_the_quarantine_of_the_only_endpoint() -> None:
    pool = pool_of("a")
    a = await pool.acquire(deadline())
    pool.release(a)
    pool.quarantine(a, 0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    endpoint = await asyncio.wait_for(pool.acquire(deadline()), 1.0)
    assert endpoint is a
    assert loop.time() - started >= 0.09


# -- scale from zero -------------------------------------------------------------------------------


async def test_a_request_at_zero_asks_for_a_replica_and_gets_the_first_one() -> None:
    starved: list[str] = []
    pool = Pool("rev-00001", on_starved=starved.append, activation_timeout_s=5.0)
    waiting = asyncio.create_task(pool.acquire(deadline()))
    await settle()
    assert starved == ["rev-00001"] and pool.queued == 1
    pool.update([("r1", "http://r1", None)])  # the replica the autoscaler started
    endpoint = await waiting
    assert endpoint.id == "r1"


async def test_no_replica_within_the_activation_timeout_is_a_503() -> None:
    pool = Pool("rev-00001", activation_timeout_s=0.05)
    with pytest.raises(ServerUnavailable, match=r"became ready within 0\.05s"):
        await pool.acquire(deadline(5.0))
    assert pool.queued == 0


async def test_a_busy_pool_does_not_ask_for_more() -> None:
    starved: list[str] = []
    pool = Pool("rev-00001", container_concurrency=1, on_starved=starved.append)
    pool.update([("r1", "http://r1", None)])
    first = await pool.acquire(deadline())
    waiting = asyncio.create_task(pool.acquire(deadline()))
    await settle()
    assert starved == []  # a full pool is the autoscaler's to judge from its metrics, not a cold start
    pool.release(first)
    assert (await waiting).id == "r1"
