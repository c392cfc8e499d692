"""`RedisLedger` and `RedisJournal` on a real redis-server: feedback is joined once across replicas,
per tenant, before or after the flush; replicas appending history together keep one point per
interval; a killed Redis raises the Unavailable exceptions but never reaches `remember` or the flusher.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from redis_server import RedisServer

from gateway.config import RedisConfig
from gateway.experiments.journal import JournalUnavailable, RedisJournal
from gateway.experiments.ledger import LedgerUnavailable, RedisLedger, Taken
from gateway.experiments.timeline import Estimate, HistoryPoint, StopState

LedgerFactory = Callable[..., RedisLedger]
JournalFactory = Callable[..., RedisJournal]


@pytest_asyncio.fixture
async def ledgers() -> AsyncIterator[LedgerFactory]:
    made: list[RedisLedger] = []

    def make(url: str, ttl_s: float = 60.0, **options: Any) -> RedisLedger:
        ledger = RedisLedger(RedisConfig(url=url), ttl_s, **options)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        await ledger.aclose()


@pytest_asyncio.fixture
async def journals() -> AsyncIterator[JournalFactory]:
    made: list[RedisJournal] = []

    def make(url: str, **options: Any) -> RedisJournal:
        journal = RedisJournal(RedisConfig(url=url), **options)
        made.append(journal)
        return journal

    yield make
    for journal in made:
        await journal.aclose()


def point(at: float, difference: float = 0.5) -> HistoryPoint:
    return HistoryPoint(at=at, metric="score", arms={"cand:1": Estimate(10, 12, difference, None, 1.0)})


async def test_feedback_is_taken_once_across_replicas(redis_server: RedisServer, ledgers: LedgerFactory) -> None:
    one, two = ledgers(redis_server.url), ledgers(redis_server.url)
    one.remember("req-1", "tenant", "exp/1", "cand:1")
    assert await one.flush() and one.pending == 0
    assert await two.take("req-1", "tenant") == Taken(found=("exp/1", "cand:1"))
    assert await two.take("req-1", "tenant") == Taken(already_used=True)
    assert await one.take("req-1", "tenant") == Taken(already_used=True)
    assert await two.take("unknown", "tenant") == Taken()


async def test_take_before_the_flush_and_its_marker(redis_server: RedisServer, ledgers: LedgerFactory) -> None:
    one, two = ledgers(redis_server.url), ledgers(redis_server.url)
    one.remember("req-1", "tenant", "exp", "control")
    assert await two.take("req-1", "tenant") == Taken()  # not written yet: the other replica cannot know it
    assert await one.take("req-1", "tenant") == Taken(found=("exp", "control"))
    assert await one.take("req-1", "tenant") == Taken(already_used=True)
    assert await one.flush()
    assert await two.take("req-1", "tenant") == Taken(already_used=True)  # the flush wrote the used marker
    assert await one.take("req-1", "tenant") == Taken(already_used=True)
    # The marker keeps the entry's expiry: nothing the ledger writes lives forever.
    assert 0 < redis_server.client().pttl(one.key("req-1", "tenant")) <= 60_000


async def test_used_marker_keeps_the_ttl(redis_server: RedisServer, ledgers: LedgerFactory) -> None:
    ledger = ledgers(redis_server.url, ttl_s=30.0)
    ledger.remember("req", "t", "exp", "a")
    assert await ledger.flush()
    key = ledger.key("req", "t")
    client = redis_server.client()
    assert 0 < client.pttl(key) <= 30_000
    assert (await ledger.take("req", "t")).found == ("exp", "a")
    assert client.get(key) == "used"
    assert 0 < client.pttl(key) <= 30_000  # KEEPTTL: the marker did not become permanent


async def test_tenants_are_isolated(redis_server: RedisServer, ledgers: LedgerFactory) -> None:
    one, two = ledgers(redis_server.url), ledgers(redis_server.url)
    one.remember("req", "t1", "exp", "a")
    one.remember("b:c", "a", "exp", "x")
    one.remember("c", "a:b", "exp", "y")  # same concatenation unescaped: must be a different key
    assert await one.flush()
    assert await two.take("req", "t2") == Taken()
    assert await two.take("req", "t1") == Taken(found=("exp", "a"))
    assert await two.take("b:c", "a") == Taken(found=("exp", "x"))
    assert await two.take("c", "a:b") == Taken(found=("exp", "y"))


async def test_entries_expire_in_redis(redis_server: RedisServer, ledgers: LedgerFactory) -> None:
    ledger = ledgers(redis_server.url, ttl_s=0.2)
    ledger.remember("req", "t", "exp", "a")
    assert await ledger.flush()
    await asyncio.sleep(0.5)  # well past the TTL; only the outcome is asserted
    assert await ledgers(redis_server.url).take("req", "t") == Taken()
    assert await ledger.take("req", "t") == Taken()


async def test_background_flusher_writes(redis_server: RedisServer, ledgers: LedgerFactory) -> None:
    one, two = ledgers(redis_server.url, flush_interval_s=0.01), ledgers(redis_server.url)
    await one.start()
    one.remember("req", "t", "exp", "a")
    for _ in range(500):  # wait for the flusher, however slow the machine
        if one.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert one.pending == 0
    assert await two.take("req", "t") == Taken(found=("exp", "a"))


async def test_killed_redis_never_reaches_remember(redis_server: RedisServer, ledgers: LedgerFactory,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    ledger = ledgers(redis_server.url, flush_interval_s=0.01, max_pending=5)
    await ledger.start()
    ledger.remember("before", "t", "exp", "a")
    assert await ledger.flush()
    redis_server.kill()
    for i in range(20):
        ledger.remember(f"r{i}", "t", "exp", "a")  # never raises: a local append
    assert ledger.pending == 5 and ledger.dropped == 15
    assert not await ledger.flush()
    assert ledger.pending == 5  # kept for the next try
    await asyncio.sleep(0.05)  # the background flusher keeps failing quietly
    assert ledger._flusher.running
    with pytest.raises(LedgerUnavailable):
        await asyncio.wait_for(ledger.take("before", "t"), 2.0)
    # Still in the local buffer: joined without Redis.
    assert await ledger.take("r19", "t") == Taken(found=("exp", "a"))
    await asyncio.wait_for(ledger.aclose(), 2.0)  # final flush fails, logged, not raised
    assert not any(r.levelname == "ERROR" for r in caplog.records)
    assert sum("dropping the oldest" in r.getMessage() for r in caplog.records) == 1  # once per outage


async def test_history_appends_once_per_gap_and_trims(redis_server: RedisServer, journals: JournalFactory) -> None:
    journal = journals(redis_server.url)
    assert await journal.history("exp:1") == []
    assert await journal.append("exp:1", point(100.0), min_gap_s=5)
    assert not await journal.append("exp:1", point(104.9), min_gap_s=5)
    assert not await journal.append("exp:1", point(90.0), min_gap_s=5)
    assert await journal.append("exp:1", point(105.0), min_gap_s=5)
    assert [p.at for p in await journal.history("exp:1")] == [100.0, 105.0]
    for i in range(2, 10):
        assert await journal.append("exp:1", point(100.0 + 5 * i, difference=i / 7), min_gap_s=5, max_points=4)
    history = await journal.history("exp:1")
    assert [p.at for p in history] == [130.0, 135.0, 140.0, 145.0]
    assert history[-1] == point(145.0, difference=9 / 7)  # round-trips exactly
    assert await journal.history("exp") == []  # ':' in the name does not leak into another experiment


async def test_replicas_appending_together_add_one_point_per_interval(redis_server: RedisServer,
                                                                      journals: JournalFactory) -> None:
    replicas = [journals(redis_server.url) for _ in range(4)]
    rng = random.Random(7)
    interval, intervals = 10.0, 30
    added = 0
    for k in range(intervals):
        # Each replica looks at its own moment within the interval; the gap is half an interval.
        looks = [replica.append("exp", point(1000.0 + k * interval + rng.uniform(0, 0.4 * interval)),
                                min_gap_s=0.5 * interval) for replica in replicas]
        results = await asyncio.gather(*looks)
        assert sum(results) == 1
        added += sum(results)
    history = await replicas[0].history("exp")
    assert len(history) == added == intervals
    assert [p.at for p in history] == sorted(p.at for p in history)


async def test_first_stop_wins_and_reset(redis_server: RedisServer, journals: JournalFactory) -> None:
    one, two = journals(redis_server.url), journals(redis_server.url)
    assert await one.stopped("exp") is None
    first = StopState(at=1.5, reason="candidate better", serve="cand:1")
    second = StopState(at=2.5, reason="guardrail", serve="control")
    in_force = await asyncio.gather(one.stop("exp", first), two.stop("exp", second))
    assert in_force[0] == in_force[1] in (first, second)
    assert await one.stop("exp", second) == in_force[0]
    assert await two.stopped("exp") == in_force[0]
    await one.append("exp", point(1.0), min_gap_s=1)
    await two.reset("exp")
    assert await one.stopped("exp") is None
    assert await one.history("exp") == []


async def test_killed_redis_raises_journal_unavailable(redis_server: RedisServer, journals: JournalFactory) -> None:
    journal = journals(redis_server.url)
    assert await journal.append("exp", point(1.0), min_gap_s=1)
    redis_server.kill()
    with pytest.raises(JournalUnavailable):
        await asyncio.wait_for(journal.append("exp", point(2.0), min_gap_s=1), 2.0)
    with pytest.raises(JournalUnavailable):
        await asyncio.wait_for(journal.history("exp"), 2.0)
    with pytest.raises(JournalUnavailable):
        await asyncio.wait_for(journal.stop("exp", StopState(at=1.0, reason="r", serve="a")), 2.0)
    with pytest.raises(JournalUnavailable):
        await asyncio.wait_for(journal.stopped("exp"), 2.0)
    with pytest.raises(JournalUnavailable):
        await asyncio.wait_for(journal.reset("exp"), 2.0)


async def test_redis_restart_reloads_scripts(redis_server: RedisServer, journals: JournalFactory,
                                             ledgers: LedgerFactory) -> None:
    journal, ledger = journals(redis_server.url, retry_s=0.0), ledgers(redis_server.url, retry_s=0.0)
    assert await journal.append("exp", point(1.0), min_gap_s=1)
    ledger.remember("req", "t", "exp", "a")
    assert await ledger.flush()
    redis_server.restart()  # empty again, and without the scripts loaded
    # The first call may meet a connection the old server closed (the client never retries by itself).
    for _ in range(5):
        try:
            added = await journal.append("exp", point(1.0), min_gap_s=1)
            break
        except JournalUnavailable:
            await asyncio.sleep(0.01)
    assert added
    ledger.remember("req2", "t", "exp", "b")
    for _ in range(5):
        if await ledger.flush():
            break
        await asyncio.sleep(0.01)
    assert ledger.pending == 0
    assert await ledger.take("req2", "t") == Taken(found=("exp", "b"))
