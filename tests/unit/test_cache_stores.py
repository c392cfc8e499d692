"""`InProcessLRU`: hits and misses, expiry on a fake clock, eviction by bytes, the entry cap, prefix deletion."""

from __future__ import annotations

from gateway.cache.stores import CacheStore, InProcessLRU


class FakeClock:
    """Monotonic time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_satisfies_the_store_protocol() -> None:
    store: CacheStore = InProcessLRU()
    assert "in-process" in store.describe()


async def test_hit_and_miss() -> None:
    store = InProcessLRU()
    assert await store.get("m:t:a") is None
    assert await store.set("m:t:a", b"answer", ttl_s=60)
    assert await store.get("m:t:a") == b"answer"
    assert await store.get("m:t:b") is None
    assert await store.set("m:t:a", b"newer", ttl_s=60)
    assert await store.get("m:t:a") == b"newer"
    assert len(store) == 1 and store.size_bytes == len("m:t:a") + len(b"newer")


async def test_entries_expire_on_read() -> None:
    clock = FakeClock()
    store = InProcessLRU(clock=clock)
    await store.set("short", b"x", ttl_s=10)
    await store.set("long", b"y", ttl_s=100)
    clock.advance(9.9)
    assert await store.get("short") == b"x"
    clock.advance(0.1)
    assert await store.get("short") is None
    assert await store.get("long") == b"y"
    assert len(store) == 1 and store.size_bytes == len("long") + 1  # the expired entry's bytes are freed


async def test_a_non_positive_ttl_stores_nothing() -> None:
    store = InProcessLRU()
    assert not await store.set("k", b"v", ttl_s=0)
    assert await store.get("k") is None


async def test_evicts_least_recently_used_first_by_bytes() -> None:
    # Each entry costs 1 (key) + 9 (value) = 10 bytes; three fit.
    store = InProcessLRU(max_bytes=30, max_entry_bytes=30)
    for key in "abc":
        assert await store.set(key, b"v" * 9, ttl_s=60)
    assert await store.get("a") == b"v" * 9  # a is now the most recently used, b the least
    assert await store.set("d", b"v" * 9, ttl_s=60)
    assert await store.get("b") is None
    assert [await store.get(key) is not None for key in "acd"] == [True, True, True]
    assert store.evictions == 1

    # One big entry pushes out as many old ones as it needs, oldest first (c, then a).
    assert await store.set("e", b"v" * 18, ttl_s=60)
    assert await store.get("c") is None and await store.get("a") is None
    assert await store.get("d") is not None and await store.get("e") is not None
    assert store.size_bytes <= 30 and store.evictions == 3


async def test_an_oversized_entry_is_refused() -> None:
    store = InProcessLRU(max_bytes=1000, max_entry_bytes=100)
    await store.set("keep", b"k", ttl_s=60)
    assert not await store.set("big", b"x" * 101, ttl_s=60)
    assert await store.get("big") is None
    assert await store.get("keep") == b"k"  # refusing evicts nothing
    assert store.too_large == 1
    assert await store.set("fits", b"x" * 100, ttl_s=60)


async def test_delete_matching() -> None:
    store = InProcessLRU()
    for key in ("e/m1/t1/a", "e/m1/t1/b", "e/m1/t2/a", "e/m2/t1/a", "e/m2/t10/a"):
        await store.set(key, b"v", ttl_s=60)
    assert await store.delete_matching("e/m1/t1/*") == 2
    assert await store.get("e/m1/t1/a") is None and await store.get("e/m1/t2/a") == b"v"
    assert await store.delete_matching("e/*/t1/*") == 1  # one tenant, every model; t10 is another tenant
    assert await store.get("e/m2/t10/a") == b"v"
    assert await store.delete_matching("e/m1/*/*") == 1
    assert await store.delete_matching("e/nothing/*/*") == 0
    assert await store.delete_matching("e/*/*/*") == 1
    assert len(store) == 0 and store.size_bytes == 0
