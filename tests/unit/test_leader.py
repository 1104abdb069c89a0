"""The leader lease: the table logic stepped through a fake clock, the elector's callbacks, and two
contenders racing on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from serving import leader
from serving.leader import LeaderElector, LeaseState, connect, release, try_acquire
from tests.election_fakes import FakeTime, Recorder

TTL = 10.0


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = connect(f"sqlite:///{tmp_path / 'state.db'}")
    yield e
    e.dispose()


# -- the table ----------------------------------------------------------------------------------------

#: (who, now, what they get) in order, on one lease with a TTL of 10 s; "-" releases.
_TABLE = [
    ("a", 100.0, LeaseState(True, "a", 100.0, 110.0)),  # free: taken
    ("b", 101.0, LeaseState(False, "a", 100.0, 110.0)),  # held by a
    ("a", 103.0, LeaseState(True, "a", 100.0, 113.0)),  # renewed, acquired kept
    ("b", 112.9, LeaseState(False, "a", 100.0, 113.0)),  # not yet expired
    ("b", 113.0, LeaseState(True, "b", 113.0, 123.0)),  # expired at 113: taken over
    ("a", 114.0, LeaseState(False, "b", 113.0, 123.0)),  # a's old lease is gone
    ("-a", 115.0, LeaseState(False, "b", 113.0, 123.0)),  # a cannot release b's lease
    ("-b", 116.0, LeaseState(False, None)),  # b releases it
    ("a", 116.5, LeaseState(True, "a", 116.5, 126.5)),  # free again: taken at once
]


def test_the_lease_table_stepped_through_a_fake_clock(engine: Engine) -> None:
    for who, now, expected in _TABLE:
        if who.startswith("-"):
            release(engine, "gateway", who[1:])
            state = _peek(engine, "gateway", now)
        else:
            state = try_acquire(engine, "gateway", who, TTL, now)
        assert state == expected, (who, now)


def _peek(engine: Engine, name: str, now: float) -> LeaseState:
    """The lease as a third party would see it (it never wins: 'nobody' only takes a free lease far
    in the past, and there is none)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT holder, acquired, expires FROM leases WHERE name = :n"), {"n": name}
        ).first()
    return LeaseState(False, None) if row is None else LeaseState(False, row[0], row[1], row[2])


def test_leases_of_different_names_are_independent(engine: Engine) -> None:
    assert try_acquire(engine, "gateway", "a", TTL, 0.0).held
    assert try_acquire(engine, "other", "b", TTL, 0.0).held
    assert release(engine, "other", "b") and not release(engine, "other", "b")
    assert try_acquire(engine, "gateway", "a", TTL, 1.0).held


# -- two contenders racing ----------------------------------------------------------------------------


def test_two_contenders_racing_never_both_win(database_url: str) -> None:
    """Each round, two engines (two gateways) try at the same moment: on a lease nobody has (both
    INSERT) and on an expired one (both UPDATE). Exactly one wins."""
    engines = [connect(database_url), connect(database_url)]
    rounds = 40
    barrier = threading.Barrier(2)
    wins: list[list[bool]] = [[], []]
    errors: list[BaseException] = []

    def contend(i: int) -> None:
        try:
            for r in range(rounds):
                barrier.wait()
                wins[i].append(try_acquire(engines[i], f"fresh-{r}", f"g{i}", TTL, 100.0).held)
                barrier.wait()
                # both take over the expired lease at once (its holder was g0 or g1 last round)
                wins[i].append(try_acquire(engines[i], "expired", f"g{i}", TTL, 100.0 + 20.0 * r).held)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in engines:
        e.dispose()
    assert errors == []
    assert [a + b for a, b in zip(*wins, strict=True)] == [1] * (2 * rounds)
    assert 0 < sum(wins[0]) < 2 * rounds  # both sides won some (the race was real)


# -- the elector --------------------------------------------------------------------------------------


def _elector(
    engine: Engine, holder: str, fake: FakeTime, calls: Recorder, ttl_s: float = TTL
) -> LeaderElector:
    return LeaderElector(
        engine,
        holder=holder,
        ttl_s=ttl_s,
        on_started_leading=calls.started,
        on_stopped_leading=calls.stopped,
        clock=fake.clock,
        sleep=fake.sleep,
    )


async def test_the_elector_leads_renews_and_loses_the_lease_to_a_successor(engine: Engine) -> None:
    fake, a_calls, b_calls = FakeTime(), Recorder(), Recorder()
    a, b = _elector(engine, "a", fake, a_calls), _elector(engine, "b", fake, b_calls)
    assert await a.step() and a.is_leader
    assert not await b.step() and not b.is_leader
    for _ in range(5):  # renewals every ttl/3: no new callbacks
        fake.now += a.renew_s
        assert await a.step()
        assert not await b.step()
    assert a_calls.calls == ["started"] and b_calls.calls == []

    # a stops renewing (its process hangs): it knows it no longer leads before the lease expires ...
    fake.now += 7.0  # 3 s left: less than one renewal interval
    assert not a.is_leader
    assert not await b.step()  # ... and b takes over only once it has expired
    fake.now += 3.0
    assert await b.step() and b_calls.calls == ["started"]
    # a's next attempt finds b holding the lease: it steps down
    assert not await a.step()
    assert a_calls.calls == ["started", "stopped"]


async def test_the_elector_steps_down_when_the_database_is_unreachable(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake, calls = FakeTime(), Recorder()
    a = _elector(engine, "a", fake, calls)
    assert await a.step()

    def unreachable(*args: object) -> LeaseState:
        raise sa.exc.OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(leader, "try_acquire", unreachable)
    fake.now += a.renew_s
    assert await a.step()  # one failed renewal: two intervals left, still leading
    assert calls.calls == ["started"] and "connection refused" in caplog.text
    fake.now += a.renew_s
    assert not await a.step()  # one interval left: steps down before anyone can take over
    assert calls.calls == ["started", "stopped"]
    monkeypatch.undo()
    fake.now += a.renew_s
    assert await a.step()  # the database is back, and the lease still a's
    assert calls.calls == ["started", "stopped", "started"]


async def test_a_database_call_that_hangs_is_not_waited_for(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, calls = FakeTime(), Recorder()
    a = _elector(engine, "a", fake, calls, ttl_s=0.3)  # the wait is renew_s real seconds: 0.1
    assert await a.step()
    hung = threading.Event()
    monkeypatch.setattr(leader, "try_acquire", lambda *args: hung.wait(5))
    fake.now += a.renew_s
    assert await a.step()  # timed out, still within the lease
    fake.now += a.renew_s
    assert not await a.step()  # still hung (not called again): steps down
    assert calls.calls == ["started", "stopped"]
    hung.set()


async def test_close_releases_the_lease_for_a_successor_at_once(engine: Engine) -> None:
    fake, a_calls, b_calls = FakeTime(), Recorder(), Recorder()
    a, b = _elector(engine, "a", fake, a_calls), _elector(engine, "b", fake, b_calls)
    running = asyncio.create_task(a.run())
    while not a.is_leader:
        await asyncio.sleep(0.01)
    await a.close()
    await running
    assert a_calls.calls == ["started", "stopped"] and not a.is_leader
    assert await b.step()  # no waiting for the TTL


async def test_run_keeps_the_lease_and_survives_failing_callbacks(engine: Engine) -> None:
    fake, calls = FakeTime(), Recorder(fail=True)
    a = _elector(engine, "a", fake, calls)
    running = asyncio.create_task(a.run())
    start = fake.now
    while fake.now < start + 5 * TTL:  # fifteen renewals
        await asyncio.sleep(0.01)
        assert not running.done()
    assert a.is_leader and calls.calls == ["started"]
    running.cancel()  # cancelled without close: steps down, the lease left to expire
    await asyncio.wait({running})
    assert calls.calls == ["started", "stopped"]
    assert try_acquire(engine, "gateway", "b", TTL, fake.now).holder == "a"


def test_the_default_holder_names_the_host_and_process(engine: Engine) -> None:
    first, second = LeaderElector(engine).holder, LeaderElector(engine).holder
    assert first.startswith(f"{socket.gethostname()}-{os.getpid()}-") and first != second
    with pytest.raises(ValueError, match="duration must be positive"):
        LeaderElector(engine, ttl_s=0)


def test_members_announce_where_they_are_and_the_gone_drop_out(engine: Engine) -> None:
    """Every campaigner, leader or not, says where it is reached (the leader's autoscaler scrapes
    them all); one not heard from for a TTL is left out, one that leaves is gone at once."""
    assert leader.announce(engine, "gateway", "a", "http://10.0.0.1:8080", 100.0, TTL) == [
        "http://10.0.0.1:8080"
    ]
    both = leader.announce(engine, "gateway", "b", "http://10.0.0.2:8080", 101.0, TTL)
    assert both == ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]
    # a is not heard from again: past a TTL it is left out
    assert leader.announce(engine, "gateway", "b", "http://10.0.0.2:8080", 111.0, TTL) == [
        "http://10.0.0.2:8080"
    ]
    leader.leave(engine, "gateway", "b")
    assert leader.announce(engine, "other", "c", "http://10.0.0.3:8080", 111.0, TTL) == [
        "http://10.0.0.3:8080"
    ]


async def test_an_elector_with_an_address_knows_the_members(engine: Engine) -> None:
    now = [100.0]
    first = LeaderElector(engine, ttl_s=TTL, holder="a", address="http://a:1", clock=lambda: now[0])
    second = LeaderElector(engine, ttl_s=TTL, holder="b", address="http://b:1", clock=lambda: now[0])
    assert await first.step() and not await second.step()
    assert second.members == ["http://a:1", "http://b:1"]
    await first.step()
    assert first.members == ["http://a:1", "http://b:1"]
    await second.close()
    await first.step()
    assert first.members == ["http://a:1"]
    await first.close()
