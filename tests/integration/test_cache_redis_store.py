"""`RedisStore` on a real redis-server: values round-trip with a TTL, oversized values are refused,
prefix deletion, and a killed Redis turns every call into a quick miss until it is back.

Nothing here asserts a duration: calls that must return quickly are guarded by a generous
`asyncio.wait_for`, and expiry and recovery are polled with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from redis_server import RedisServer

from gateway.cache.stores import CacheStore, CacheStoreError, RedisStore
from gateway.config import RedisConfig

T = TypeVar("T")
GUARD_S = 2.0  # far above the budget: only catches a call that hangs


async def returns(call: Awaitable[T]) -> T:
    """The call's result; fails the test if it does not return within the guard."""
    return await asyncio.wait_for(call, GUARD_S)


async def until(predicate: Callable[[], Awaitable[bool]], within: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


StoreFactory = Callable[..., RedisStore]


@pytest_asyncio.fixture
async def stores() -> AsyncIterator[StoreFactory]:
    made: list[RedisStore] = []

    def make(url: str, **options: Any) -> RedisStore:
        store = RedisStore(RedisConfig(url=url), **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


async def test_set_get_and_expiry(redis_server: RedisServer, stores: StoreFactory) -> None:
    store: CacheStore = stores(redis_server.url)
    assert await store.get("m:t:k") is None
    assert await store.set("m:t:k", b"\x00binary\xff", ttl_s=60)
    assert await store.get("m:t:k") == b"\x00binary\xff"
    with redis_server.client() as client:
        assert client.exists("gateway:cache:m:t:k")  # namespaced under the store's prefix
        assert 0 < client.pttl("gateway:cache:m:t:k") <= 60_000

    assert await store.set("m:t:short", b"soon gone", ttl_s=0.2)
    assert await store.get("m:t:short") == b"soon gone"

    async def expired() -> bool:
        return await store.get("m:t:short") is None

    await until(expired, what="the short entry to expire")
    assert await store.get("m:t:k") == b"\x00binary\xff"


async def test_an_oversized_value_is_refused(redis_server: RedisServer, stores: StoreFactory) -> None:
    store = stores(redis_server.url, max_entry_bytes=1000)
    assert not await store.set("big", b"x" * 1001, ttl_s=60)
    assert await store.get("big") is None
    assert store.too_large == 1
    assert await store.set("fits", b"x" * 1000, ttl_s=60)
    assert store.available and store.errors == 0


async def test_delete_matching(redis_server: RedisServer, stores: StoreFactory) -> None:
    store = stores(redis_server.url)
    other = stores(redis_server.url, key_prefix="other[1]:")  # glob characters in the prefix are literal
    keys = [f"e/m1/t1/{i}" for i in range(1200)] + ["e/m1/t2/a", "e/m2/t1/a", "e/m2/t10/a"]  # > one batch
    for key in keys:
        assert await store.set(key, b"v", ttl_s=60)
    assert await other.set("e/m1/t1/0", b"theirs", ttl_s=60)

    assert await store.delete_matching("e/m1/t1/*") == 1200
    assert await store.get("e/m1/t1/7") is None
    assert await store.get("e/m1/t2/a") == b"v"
    assert await store.delete_matching("e/*/t1/*") == 1  # one tenant across models, not t10
    assert await store.get("e/m2/t10/a") == b"v"
    assert await store.delete_matching("e/*/*/*") == 2
    assert await other.get("e/m1/t1/0") == b"theirs"  # another prefix's keys are untouched


async def test_redis_killed_calls_give_up_then_skip_then_recover(
    redis_server: RedisServer, stores: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.cache")
    store = stores(redis_server.url, retry_s=0.3)
    assert await store.set("k", b"before", ttl_s=60)
    assert store.available

    redis_server.kill()
    assert await returns(store.get("k")) is None
    assert not store.available
    assert store.errors == 1

    skipped = store.skipped_while_down
    assert await returns(store.set("k", b"during", ttl_s=60)) is False
    assert await returns(store.get("k")) is None
    assert store.skipped_while_down == skipped + 2
    assert store.errors == 1  # skipped calls never touch the network

    with pytest.raises(CacheStoreError):
        await returns(store.delete_matching("e/*"))  # admin calls report the failure instead of hiding it

    redis_server.restart()  # an empty Redis on the same port

    async def works_again() -> bool:
        return await returns(store.set("k", b"after", ttl_s=60))

    await until(works_again, what="the store to use Redis again")
    assert store.available
    assert await store.get("k") == b"after"
    warnings = [r for r in caplog.records if r.name == "gateway.cache" and r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.name == "gateway.cache" and r.levelno == logging.INFO]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()
    assert len(infos) == 1 and "reachable again" in infos[0].getMessage()


async def test_a_silent_redis_costs_at_most_the_budget(stores: StoreFactory) -> None:
    # A listener that accepts and never answers: the call must give up on its own budget.
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        store = stores(f"redis://127.0.0.1:{port}/0", retry_s=60)
        assert await returns(store.get("k")) is None
        # One slow answer costs that call only: the breaker opens on the third in a row.
        assert store.available and store.errors == 1
        assert await returns(store.get("k")) is None
        assert await returns(store.set("k", b"v", ttl_s=60)) is False
        assert not store.available and store.errors == 3
        assert await returns(store.set("k", b"v", ttl_s=60)) is False
        assert store.skipped_while_down == 1
    finally:
        server.close()
        await server.wait_closed()
