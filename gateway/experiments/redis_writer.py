"""The part the experiment stores share: writes buffered in the process and flushed to Redis from a
background task, every call under a `RedisGuard`, so the request path never waits for Redis.

Every experiment key (arm statistics, feedback ledger, journal) lives under the prefix
`gateway:{exp}:` by default: one hash tag, so on Redis Cluster a flush script may write the keys of
every experiment and arm at once. They share one slot, hence one primary: small for arm statistics
and history, while the feedback ledger holds one short key per request for `feedback_ttl_s`, which
sizes that primary's memory. A prefix given without a hash tag is wrapped in one (`test:` becomes
`{test:}`, see `gateway.redis_connect.with_hash_tag`).
"""

from __future__ import annotations

import asyncio
import logging

from gateway.cache.redis_guard import RedisGuard
from gateway.config import RedisConfig
from gateway.redis_connect import RedisClient, connect_redis, describe_redis
from gateway.routing.periodic import PeriodicTask

log = logging.getLogger("gateway.experiments")

# Where experiment keys live unless a store is given another prefix.
EXPERIMENT_KEY_PREFIX = "gateway:{exp}:"


class FlushedRedisWriter:
    """A Redis client, its guard, and a flusher calling `flush` every `flush_interval_s`.

    Subclasses buffer what they are given, write it in `flush` (under `_lock`, returning False when
    Redis did not take it, the data kept) and say in `unflushed` what would be lost at shutdown.
    """

    def __init__(self, redis: RedisConfig, *, what: str, flush_interval_s: float, budget_s: float,
                 retry_s: float) -> None:
        self.redis_config = redis
        self.what = what
        self.flush_interval_s = flush_interval_s
        self.guard = RedisGuard(self.describe, budget_s=budget_s, retry_s=retry_s, what=what)
        self.redis: RedisClient = connect_redis(redis, socket_timeout_s=2.0)
        self._lock = asyncio.Lock()
        self._flusher = PeriodicTask(f"{what.replace(' ', '-')}-flush", self._flush_logged, flush_interval_s)
        self._started = False
        self._warned_drop = False  # one warning per outage about data dropped for want of room

    def describe(self) -> str:
        return describe_redis(self.redis_config)

    async def flush(self) -> bool:
        raise NotImplementedError

    def unflushed(self) -> str:
        """What is still unwritten, for the shutdown warning (e.g. "12 observations")."""
        raise NotImplementedError

    async def start(self) -> None:
        """Start the background flusher (idempotent)."""
        if not self._started:
            self._started = True
            self._flusher.start()

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception:  # the flusher must outlive any surprise, or the numbers stop silently
            log.exception("%s flush failed unexpectedly", self.what)

    async def aclose(self) -> None:
        """Stop the flusher, try one last flush, close the connection; never raises for Redis trouble."""
        await self._flusher.stop()
        self._started = False
        if not await self.flush():
            log.warning("%s: %s not written to %s at shutdown", self.what, self.unflushed(), self.describe())
        await self.redis.aclose()
