"""`RemoteFlights` on a real redis-server: two replicas (two stores, two owners) coalesce one request.

The leader's payloads, published before and after a follower joins, reach the follower's local
`Flight` in order, then the entry; abort, a crashed leader, a dead Redis and a timed-out follower all
end the follow with False and leave the local flight alone; a lock is only ever released by its own
lead. Nothing here asserts a duration: calls that must not hang are guarded by a generous timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest_asyncio
from redis_server import RedisServer

from gateway.cache.entry import ENTRY_VERSION, CacheEntry
from gateway.cache.flight import Flight
from gateway.cache.remote_flight import RemoteFlights, RemoteLead
from gateway.cache.stores import RedisStore
from gateway.config import RedisConfig

T = TypeVar("T")
GUARD_S = 5.0  # far above any poll, budget or lock TTL used here: only catches a hang
PREFIX = "gateway:cache:"
DIGEST = "d" * 64


async def returns(call: Awaitable[T], within: float = GUARD_S) -> T:
    return await asyncio.wait_for(call, within)


def answer(text: str = "hi") -> CacheEntry:
    return CacheEntry(version=ENTRY_VERSION, kind="chat", backend="b", created_at=0.0,
                      body=b'{"choices":[{"message":{"content":"' + text.encode() + b'"}}]}')


async def collect(flight: Flight) -> list[bytes]:
    return [payload async for payload in flight.follow(GUARD_S)]


Replicas = Callable[..., RemoteFlights]


@pytest_asyncio.fixture
async def replica() -> AsyncIterator[Replicas]:
    """Makes one replica's `RemoteFlights` (its own store and connections) on a Redis URL."""
    made: list[RemoteFlights] = []

    def make(url: str, owner: str, **options: Any) -> RemoteFlights:
        # A generous budget: these tests are about behaviour, and a busy machine must not open the breaker.
        store = RedisStore(RedisConfig(url=url), budget_s=1.0, retry_s=60.0)
        flights = RemoteFlights(store, owner=owner, **{"poll_s": 0.05, **options})
        made.append(flights)
        return flights

    yield make
    for flights in made:
        await flights.aclose()
        await flights.store.aclose()


async def until_true(predicate: Callable[[], bool], within: float = GUARD_S) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def shared_lead(flights: RemoteFlights, digest: str = DIGEST) -> RemoteLead:
    lead = await returns(flights.lead(digest))
    assert lead is not None and lead.shared
    return lead


async def test_a_second_replica_follows_the_first(redis_server: RedisServer, replica: Replicas) -> None:
    a, b = replica(redis_server.url, "a"), replica(redis_server.url, "b")
    lead = await shared_lead(a)
    assert await returns(b.lead(DIGEST)) is None  # the other replica follows
    assert await returns(a.lead(DIGEST)) is None  # and so would this one's next request
    with redis_server.client() as client:
        assert client.get(f"{PREFIX}lock:{{{DIGEST}}}") == "a"
        assert client.type(f"{PREFIX}flight:{{{DIGEST}}}") == "stream"

    lead.publish(b"one")
    lead.publish(b"two")
    into = Flight(DIGEST)
    local = asyncio.create_task(collect(into))  # a request on replica b following b's local flight
    following = asyncio.create_task(b.follow(DIGEST, into, GUARD_S))
    await asyncio.sleep(0.1)
    lead.publish(b"three")
    entry = answer()
    await returns(lead.complete(entry))

    assert await returns(following) is True
    assert into.entry == entry
    assert await returns(local) == [b"one", b"two", b"three"]
    with redis_server.client() as client:
        assert not client.exists(f"{PREFIX}lock:{{{DIGEST}}}")  # released
        assert 0 < client.pttl(f"{PREFIX}flight:{{{DIGEST}}}")  # the stream expires on its own

    # A finished flight's lock is free: the next miss leads a new flight, which starts from scratch.
    again = await shared_lead(b)
    late = Flight(DIGEST)
    following = asyncio.create_task(a.follow(DIGEST, late, GUARD_S))
    again.publish(b"new")
    await returns(again.complete(answer("new")))
    assert await returns(following) is True
    assert late.entry == answer("new")
    assert await returns(collect(late)) == [b"new"]


async def test_a_late_follower_gets_a_finished_flight_at_once(redis_server: RedisServer, replica: Replicas) -> None:
    a, b = replica(redis_server.url, "a"), replica(redis_server.url, "b")
    lead = await shared_lead(a)
    for i in range(5):
        lead.publish(f"chunk {i}".encode())
    await returns(lead.complete(answer()))
    assert not lead.sharing  # nobody asked: the payloads never went to Redis, the end carries the answer

    into = Flight(DIGEST)
    assert await returns(b.follow(DIGEST, into, GUARD_S)) is True
    assert into.entry == answer()
    assert await returns(collect(into)) == []


async def test_payloads_go_to_redis_once_a_follower_asks_from_the_first_one(
    redis_server: RedisServer, replica: Replicas
) -> None:
    a, b = replica(redis_server.url, "a"), replica(redis_server.url, "b")
    lead = await shared_lead(a)
    payloads = [f"chunk {i}".encode() for i in range(700)]  # more than one write batch and one read batch
    for payload in payloads[:600]:
        lead.publish(payload)
    with redis_server.client() as client:
        assert client.xlen(f"{PREFIX}flight:{{{DIGEST}}}") == 1  # only the start message so far
    into = Flight(DIGEST)
    following = asyncio.create_task(b.follow(DIGEST, into, GUARD_S))
    await until_true(lambda: lead.sharing)
    for payload in payloads[600:]:
        lead.publish(payload)
    await returns(lead.complete(answer()))
    assert await returns(following) is True
    assert into.entry == answer()
    assert await returns(collect(into)) == payloads


async def test_abort_ends_the_follow_without_failing_the_local_flight(
    redis_server: RedisServer, replica: Replicas
) -> None:
    a, b = replica(redis_server.url, "a"), replica(redis_server.url, "b")
    lead = await shared_lead(a)
    lead.publish(b"partial")
    into = Flight(DIGEST)
    following = asyncio.create_task(b.follow(DIGEST, into, GUARD_S))
    await asyncio.sleep(0.1)
    await returns(lead.abort("backend error"))
    assert await returns(following) is False
    assert not into.done  # the caller decides what its local followers do
    assert into.published == 1
    assert await returns(b.lead(DIGEST)) is not None  # the lock was released


async def test_a_crashed_leader_is_given_up_once_its_lock_lapses(redis_server: RedisServer, replica: Replicas) -> None:
    a = replica(redis_server.url, "a", lock_ttl_s=0.3)
    b = replica(redis_server.url, "b")
    lead = await shared_lead(a)
    lead.publish(b"one")
    await asyncio.sleep(0.1)
    lead._halt()  # the process dies: no more keep-alive, no release

    into = Flight(DIGEST)
    assert await returns(b.follow(DIGEST, into, idle_timeout_s=60)) is False  # not the idle timeout
    # Nobody had asked for payloads before the crash, so none reached Redis; the local flight is left as it
    # was, for its own leader to decide.
    assert not into.done and into.published == 0
    assert (await shared_lead(b)).shared  # the lock lapsed: a new leader can take over


async def test_a_live_leader_keeps_its_lock(redis_server: RedisServer, replica: Replicas) -> None:
    a = replica(redis_server.url, "a", lock_ttl_s=0.3)
    b = replica(redis_server.url, "b")
    lead = await shared_lead(a)
    for _ in range(4):  # well past the lock's TTL, with nothing published: the keep-alive alone holds it
        await asyncio.sleep(0.25)
        assert await returns(b.lead(DIGEST)) is None
    await returns(lead.complete(answer()))
    assert await returns(b.lead(DIGEST)) is not None


async def test_a_follower_that_times_out_leaves_nothing_behind(redis_server: RedisServer, replica: Replicas) -> None:
    a, b = replica(redis_server.url, "a"), replica(redis_server.url, "b")
    lead = await shared_lead(a)
    with redis_server.client() as client:
        before = sorted(client.keys("*"))
    into = Flight(DIGEST)
    assert await returns(b.follow(DIGEST, into, idle_timeout_s=0.2)) is False
    assert not into.done
    with redis_server.client() as client:
        assert sorted(client.keys("*")) == before
    await returns(lead.abort("done"))


async def test_a_lead_never_releases_or_writes_into_another_lead(redis_server: RedisServer, replica: Replicas) -> None:
    a, b = replica(redis_server.url, "a"), replica(redis_server.url, "b")
    lock, stream = f"{PREFIX}lock:{{{DIGEST}}}", f"{PREFIX}flight:{{{DIGEST}}}"
    stalled = await shared_lead(a)
    with redis_server.client() as client:
        client.delete(lock)  # a's lock lapsed while it stalled ...
    successor = await shared_lead(b)  # ... and b took over
    stalled.publish(b"stale")
    await returns(stalled.complete(answer("stale")))
    with redis_server.client() as client:
        assert client.get(lock) == "b"
        entries = client.xrange(stream)
    assert len(entries) == 1 and entries[0][1]["o"] == "b"  # only b's start message

    # The same owner leading the same digest again is a different lead: the old one cannot end it.
    await returns(successor.complete(answer()))
    first = await shared_lead(a)
    with redis_server.client() as client:
        client.delete(lock)
    second = await shared_lead(a)
    await returns(first.abort("late"))
    with redis_server.client() as client:
        assert client.get(lock) == "a"
        assert len(client.xrange(stream)) == 1
    await returns(second.complete(answer()))
    with redis_server.client() as client:
        assert not client.exists(lock)


async def test_a_dead_redis_means_going_alone_at_once(redis_server: RedisServer, replica: Replicas) -> None:
    a, b = replica(redis_server.url, "a"), replica(redis_server.url, "b")
    lead = await shared_lead(a)
    lead.publish(b"one")
    into = Flight(DIGEST)
    following = asyncio.create_task(b.follow(DIGEST, into, GUARD_S))
    await asyncio.sleep(0.1)

    redis_server.kill()
    assert await returns(following) is False
    assert not into.done
    lead.publish(b"two")
    await returns(lead.complete(answer()))  # never raises

    noop = await returns(a.lead("other"))
    assert noop is not None and not noop.shared  # the caller just goes to its backend
    noop.publish(b"ignored")
    await returns(noop.complete(answer()))
    await returns(noop.abort("ignored"))
    assert await returns(b.follow("other", Flight("other"), GUARD_S)) is False
    assert not a.store.available and not b.store.available


# Keeps Redis busy (every client waits) for ARGV[1] microseconds.
_BUSY = """
local t = redis.call('TIME')
local stop = t[1] * 1000000 + t[2] + tonumber(ARGV[1])
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= stop
return 1
"""


async def test_a_lead_that_missed_its_budget_does_not_hold_the_lock(
    redis_server: RedisServer, replica: Replicas
) -> None:
    store = RedisStore(RedisConfig(url=redis_server.url), budget_s=0.05, retry_s=60.0)
    hasty = RemoteFlights(store, owner="hasty", lock_ttl_s=30.0)
    other = replica(redis_server.url, "other")
    try:
        warm = await shared_lead(hasty, "warm")  # a connection open, the scripts known: the lock command goes out
        await returns(warm.abort("warming up"))
        with redis_server.client() as client:
            busy = asyncio.create_task(asyncio.to_thread(client.eval, _BUSY, 0, 400_000))
            await asyncio.sleep(0.1)  # the script is running: Redis answers nobody until it ends
            lead = await returns(hasty.lead(DIGEST))
            assert lead is not None and not lead.shared  # over budget: go alone
            await returns(busy)
        # The lock command reached Redis and ran once it was free; the lead undid it, so the next
        # request leads at once instead of following a leader that is not there for `lock_ttl_s`.

        async def free() -> bool:
            return await other.lead(DIGEST) is not None

        deadline = asyncio.get_running_loop().time() + GUARD_S
        while not await free():
            assert asyncio.get_running_loop().time() < deadline, "the lock was never released"
            await asyncio.sleep(0.05)
    finally:
        await hasty.aclose()
        await store.aclose()
