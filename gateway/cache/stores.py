"""Where cached responses live: an in-process LRU (the embedded default) or a shared Redis.

Both stores hold opaque bytes under namespaced string keys (`gateway/cache/plan.py` builds them as
`e/<model>/<tenant>/<digest>`, so `delete_matching` can drop one model's or one tenant's entries). A store
never raises on the request path: a miss, an unstorable value and an unreachable store all look
the same to the caller (None, False), because the request must go on to the backend regardless.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from gateway.cache.redis_guard import RedisCallFailed, RedisGuard
from gateway.config import RedisConfig
from gateway.redis_connect import REDIS_ERRORS, RedisClient, connect_redis, describe_redis

Clock = Callable[[], float]
MiB = 1024 * 1024

# Keys per SCAN step and per UNLINK: big enough to be quick, small enough that one UNLINK never
# holds Redis for long.
_DELETE_BATCH = 500
# Per-command socket timeout outside the request path (admin deletion, closing): the request
# path is bounded far tighter by `budget_s`.
_ADMIN_SOCKET_TIMEOUT_S = 5.0


class CacheStoreError(Exception):
    """An admin operation on a store failed (the store is unreachable); the request path never sees it."""


class CacheStore(Protocol):
    """Bytes under string keys with a time to live; what the response cache reads and writes."""

    async def get(self, key: str) -> bytes | None:
        """The stored value, or None when absent, expired or the store cannot answer in time."""
        ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> bool:
        """Store `value` for `ttl_s` seconds; False when it was not stored (too large, or the store is unavailable)."""
        ...

    async def delete_matching(self, pattern: str) -> int:
        """Delete every key matching `pattern`, where `*` stands for any run of characters (keys are
        built without other glob characters); the number deleted. Raises `CacheStoreError` if it cannot."""
        ...

    def describe(self) -> str:
        """A short human description for logs and `cache stats` (never a password)."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


class InProcessLRU:
    """A bounded least-recently-used store in this process's memory.

    The bound is on bytes (each entry counts its key's length plus its value's), not entries,
    because cached responses range from a few hundred bytes to a long stream's chunks. Expiry is
    checked on read; an expired entry still occupies its bytes until it is read or evicted, which
    is harmless because eviction frees the least recently used first and an expired entry is
    never used again. Not shared between replicas: a multi-replica deployment uses `RedisStore`.
    """

    def __init__(
        self, max_bytes: int = 64 * MiB, max_entry_bytes: int = 1 * MiB, clock: Clock = time.monotonic
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.clock = clock
        self.available = True  # always: it lives in this process
        self.evictions = 0
        self.too_large = 0
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if self.clock() >= expires_at:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> bool:
        cost = len(key) + len(value)
        if len(value) > self.max_entry_bytes or cost > self.max_bytes:
            self.too_large += 1
            return False
        if ttl_s <= 0:
            return False
        if key in self._entries:
            self._remove(key)
        self._entries[key] = (value, self.clock() + ttl_s)
        self._bytes += cost
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self.evictions += 1
        return True

    async def delete_matching(self, pattern: str) -> int:
        doomed = [key for key in self._entries if fnmatch.fnmatchcase(key, pattern)]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def describe(self) -> str:
        return f"in-process LRU ({self.max_bytes / MiB:g} MiB)"

    async def aclose(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _remove(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self._bytes -= len(key) + len(value)


class RedisStore:
    """Cache entries in Redis, shared by every gateway replica.

    Every `get` and `set` gives up after `budget_s`, so a slow or vanished Redis delays a request
    by at most that much. The first timeout or connection error opens a breaker: for `retry_s`
    calls return at once (a miss, not stored) without touching the network, then one call is let
    through to probe; its success closes the breaker, its failure keeps it open another `retry_s`.
    One WARNING is logged when Redis goes away and one INFO when it is back. `errors` counts failed
    calls, `skipped_while_down` the calls answered by the open breaker, `too_large` the refused values.
    The connection and the breaker (`guard`) are shared with `RemoteFlights` on the same Redis.

    Keys are `key_prefix` + the plan's store key (`e/<model>/<tenant>/{<digest>}`): the digest is
    the hash tag, so on Redis Cluster entries spread over every primary while each entry shares its
    slot with its flight's keys. Deletion scans every primary (redis-py's cluster `scan_iter`).
    """

    def __init__(
        self,
        config: RedisConfig,
        *,
        key_prefix: str = "gateway:cache:",
        max_entry_bytes: int = 1 * MiB,
        budget_s: float = 0.05,
        retry_s: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.key_prefix = key_prefix
        self.max_entry_bytes = max_entry_bytes
        self.clock = clock
        self.too_large = 0
        self.guard = RedisGuard(self.describe, budget_s=budget_s, retry_s=retry_s, clock=clock)
        # The guard bounds request-path calls; the socket timeout only bounds admin calls outside it.
        self.redis: RedisClient = connect_redis(config, socket_timeout_s=_ADMIN_SOCKET_TIMEOUT_S)

    @property
    def available(self) -> bool:
        """False while the breaker is open (including while a probe is under way)."""
        return self.guard.available

    @property
    def budget_s(self) -> float:
        return self.guard.budget_s

    @property
    def retry_s(self) -> float:
        return self.guard.retry_s

    @property
    def errors(self) -> int:
        return self.guard.errors

    @property
    def skipped_while_down(self) -> int:
        return self.guard.skipped_while_down

    def describe(self) -> str:
        return describe_redis(self.config)

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.guard.call("get", lambda: self.redis.get(self.key_prefix + key))
        except RedisCallFailed:
            return None
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: float) -> bool:
        if len(value) > self.max_entry_bytes:
            self.too_large += 1
            return False
        # PX takes whole milliseconds and refuses 0.
        ttl_ms = int(ttl_s * 1000)
        if ttl_ms <= 0:
            return False
        try:
            await self.guard.call("set", lambda: self.redis.set(self.key_prefix + key, value, px=ttl_ms))
        except RedisCallFailed:
            return False
        return True

    async def delete_matching(self, pattern: str) -> int:
        # An admin action, not the request path: it ignores the breaker and the budget (each
        # command is bounded by the socket timeout) and reports failure instead of hiding it.
        match = _glob_escape(self.key_prefix) + pattern
        deleted = 0
        try:
            batch: list[bytes] = []
            async for name in self.redis.scan_iter(match=match, count=_DELETE_BATCH):
                batch.append(name)
                if len(batch) >= _DELETE_BATCH:
                    deleted += await self.redis.unlink(*batch)
                    batch = []
            if batch:
                deleted += await self.redis.unlink(*batch)
        except REDIS_ERRORS as err:
            self.guard.failed(err, "delete")
            raise CacheStoreError(f"deleting {pattern!r} from {self.describe()} failed: {err}") from err
        self.guard.succeeded()
        return deleted

    async def aclose(self) -> None:
        await self.redis.aclose()


_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def _glob_escape(text: str) -> str:
    """`text` as a literal inside a Redis MATCH pattern (keys may contain glob characters)."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)
