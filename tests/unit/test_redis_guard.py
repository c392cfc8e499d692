"""The budget and breaker in front of the response cache's Redis, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.cache.redis_guard import RedisCallFailed, RedisGuard


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock) -> RedisGuard:
    return RedisGuard(lambda: "redis at test", budget_s=0.01, retry_s=1.0, clock=clock)


async def answers() -> str:
    return "ok"


async def never() -> str:
    await asyncio.Event().wait()
    return "unreachable"


async def refused() -> str:
    raise RedisConnectionError("connection refused")


async def test_a_refused_connection_opens_the_breaker_at_once_and_a_probe_closes_it() -> None:
    clock = Clock()
    g = guard(clock)
    with pytest.raises(RedisCallFailed):
        await g.call("get", refused)
    assert not g.available
    with pytest.raises(RedisCallFailed):
        await g.call("get", answers)  # refused without a try while open
    assert g.skipped_while_down == 1
    clock.now += 1.0
    assert await g.call("get", answers) == "ok"  # the probe
    assert g.available


async def test_timeouts_open_it_only_when_redis_answers_nobody() -> None:
    clock = Clock()
    g = guard(clock)
    assert await g.call("get", answers) == "ok"
    # Slow calls while others are answered: our own congestion, each costs only itself.
    for _ in range(5):
        with pytest.raises(RedisCallFailed):
            await g.call("get", never)
    assert g.available and g.errors == 5
    # Nobody answered for longer than twice the budget: three timeouts in a row open it.
    clock.now += 1.0
    for expected in (True, True, False):
        with pytest.raises(RedisCallFailed):
            await g.call("get", never)
        assert g.available is expected
    clock.now += 1.0
    assert await g.call("get", answers) == "ok"
    assert g.available


async def test_a_success_between_timeouts_resets_the_run() -> None:
    clock = Clock()
    g = guard(clock)
    for _ in range(2):
        with pytest.raises(RedisCallFailed):
            await g.call("get", never)
    assert await g.call("get", answers) == "ok"
    clock.now += 1.0
    for _ in range(2):
        with pytest.raises(RedisCallFailed):
            await g.call("get", never)
    assert g.available  # two in a row since the last success, not four
