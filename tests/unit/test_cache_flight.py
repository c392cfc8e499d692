"""`Flight` and `FlightTable`: followers see every payload in order wherever they join, completion and
failure reach every follower, silence ends in `FlightTimeout`, and the table hands out one flight per
digest until its leader lands it.

No test asserts a duration: idle timeouts are either tiny (the silence is the point) or generous (they
only catch a hang).
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.cache.entry import ENTRY_VERSION, CacheEntry
from gateway.cache.flight import Flight, FlightFailed, FlightTable, FlightTimeout

PATIENT_S = 5.0  # an idle timeout that only a hang reaches


def answer(text: str = "hi") -> CacheEntry:
    return CacheEntry(version=ENTRY_VERSION, kind="chat", backend="b", created_at=0.0,
                      body=b'{"choices":[{"message":{"content":"' + text.encode() + b'"}}]}')


async def collect(flight: Flight, idle_timeout_s: float = PATIENT_S) -> list[bytes]:
    return [payload async for payload in flight.follow(idle_timeout_s)]


async def settle() -> None:
    """Let every ready task run until it waits again."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_followers_joining_before_and_after_payloads_see_them_all_in_order() -> None:
    flight = Flight("d1")
    early = asyncio.create_task(collect(flight))
    await settle()
    assert flight.followers == 1
    flight.publish(b"one")
    flight.publish(b"two")
    await settle()
    late = asyncio.create_task(collect(flight))
    await settle()
    flight.publish(b"three")
    await settle()
    assert not early.done() and not late.done()
    entry = answer()
    flight.complete(entry)

    assert await early == [b"one", b"two", b"three"]
    assert await late == [b"one", b"two", b"three"]
    assert flight.entry is entry and flight.done
    assert flight.published == 3
    assert flight.followers == 0
    # Joining after completion: everything at once, then the end.
    assert await collect(flight) == [b"one", b"two", b"three"]


async def test_complete_wakes_every_waiter() -> None:
    flight = Flight("d")
    waiters = [asyncio.create_task(flight.wait(PATIENT_S)) for _ in range(3)]
    follower = asyncio.create_task(collect(flight))
    await settle()
    assert flight.followers == 4
    entry = answer()
    flight.complete(entry)
    assert await asyncio.gather(*waiters) == [entry] * 3
    assert await follower == []
    assert await flight.wait(PATIENT_S) is entry  # already done: no waiting


async def test_fail_reaches_followers_after_the_payloads_published() -> None:
    flight = Flight("d")
    seen: list[bytes] = []

    async def follow() -> None:
        async for payload in flight.follow(PATIENT_S):
            seen.append(payload)

    follower = asyncio.create_task(follow())
    waiter = asyncio.create_task(flight.wait(PATIENT_S))
    flight.publish(b"partial")
    await settle()
    flight.fail("backend hung up")
    with pytest.raises(FlightFailed) as failed:
        await follower
    assert failed.value.reason == "backend hung up"
    assert not isinstance(failed.value, FlightTimeout)
    assert seen == [b"partial"]
    with pytest.raises(FlightFailed):
        await waiter
    assert flight.done and flight.entry is None


async def test_fail_is_idempotent_and_a_no_op_after_complete() -> None:
    flight = Flight("d")
    entry = answer()
    flight.complete(entry)
    flight.fail("too late")
    flight.publish(b"after the end")  # ignored: followers that finished must not miss anything
    assert flight.failure is None and flight.entry is entry
    assert await flight.wait(PATIENT_S) is entry
    assert flight.published == 0

    failed = Flight("e")
    failed.fail("first")
    failed.fail("second")
    failed.complete(answer())
    assert failed.failure == "first" and failed.entry is None


async def test_silence_ends_in_a_timeout() -> None:
    flight = Flight("d")
    flight.publish(b"one")
    seen: list[bytes] = []
    with pytest.raises(FlightTimeout):
        async for payload in flight.follow(0.01):
            seen.append(payload)
    assert seen == [b"one"]  # what was there is delivered before the silence counts
    with pytest.raises(FlightTimeout):
        await flight.wait(0.01)
    assert flight.followers == 0
    assert not flight.done  # a follower giving up does not end the flight for the others


async def test_a_payload_counts_as_news_for_wait() -> None:
    flight = Flight("d")

    async def trickle() -> None:
        # Each gap is far below the idle timeout; only the sum of them exceeds it.
        for _ in range(10):
            await asyncio.sleep(0.03)
            flight.publish(b".")
        flight.complete(answer())

    leader = asyncio.create_task(trickle())
    entry = await flight.wait(0.2)
    await leader
    assert entry is flight.entry


async def test_fifty_followers_of_one_flight() -> None:
    flight = Flight("d")
    followers = [asyncio.create_task(collect(flight)) for _ in range(25)]
    payloads = [f"chunk {i}".encode() for i in range(40)]
    for i, payload in enumerate(payloads):
        flight.publish(payload)
        if i == 20:
            await settle()
            followers += [asyncio.create_task(collect(flight)) for _ in range(25)]
        if i % 3 == 0:
            await asyncio.sleep(0)
    await settle()
    assert flight.followers == 50
    flight.complete(answer())
    results = await asyncio.gather(*followers)
    assert all(result == payloads for result in results)
    assert flight.followers == 0


async def test_table_hands_out_one_flight_per_digest_until_landed() -> None:
    table = FlightTable()
    flight, leads = table.join("d")
    assert leads
    again, leads_again = table.join("d")
    assert again is flight and not leads_again
    other, leads_other = table.join("other")
    assert other is not flight and leads_other
    assert len(table) == 2

    flight.complete(answer())
    late, late_leads = table.join("d")  # completed but not landed yet: joined, answered at once
    assert late is flight and not late_leads

    table.land(flight)
    assert len(table) == 1
    fresh, fresh_leads = table.join("d")
    assert fresh is not flight and fresh_leads
    assert flight.entry is not None  # landing a completed flight leaves it completed


async def test_landing_an_unfinished_flight_fails_it() -> None:
    table = FlightTable()
    flight, _ = table.join("d")
    follower = asyncio.create_task(collect(flight))
    await settle()
    table.land(flight)
    with pytest.raises(FlightFailed, match="leader went away"):
        await follower
    assert len(table) == 0


async def test_a_failed_flight_is_replaced_and_its_late_landing_leaves_the_new_one() -> None:
    table = FlightTable()
    first, _ = table.join("d")
    first.fail("backend error")
    second, leads = table.join("d")
    assert second is not first and leads  # a failure does not spread to later requests
    table.land(first)  # the first leader's finally runs after the second joined
    assert table.get("d") is second and not second.done
    table.land(second)
    assert len(table) == 0


async def test_a_follower_that_stops_early_is_no_longer_counted() -> None:
    flight = Flight("d")
    flight.publish(b"one")
    flight.publish(b"two")
    stream = flight.follow(PATIENT_S)
    assert await anext(stream) == b"one"
    assert flight.followers == 1
    await stream.aclose()  # the client hung up
    assert flight.followers == 0
