"""The response cache as the request path sees it: one store, the flights in progress, the books.

Built once per gateway from the `cache:` section: entries live in Redis when the gateway has a
Redis (every replica shares them, and identical requests are coalesced across replicas through
`RemoteFlights`), otherwise in this process's bounded LRU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from gateway.cache.entry import CacheEntry, decode_entry, encode_entry
from gateway.cache.flight import FlightTable
from gateway.cache.plan import CachePlan, entry_pattern
from gateway.cache.record import unstorable_reason
from gateway.cache.remote_flight import RemoteFlights, RemoteLead
from gateway.cache.settings import CacheConfig, RouteCacheConfig
from gateway.cache.stores import CacheStore, InProcessLRU, RedisStore
from gateway.config import RedisConfig

log = logging.getLogger("gateway.cache")


class Claimed(NamedTuple):
    """A claim's outcome: the stored `entry`; or `lead` (answer it; a no-op lead without Redis
    coordination); or `follow` (another replica answers it)."""

    entry: CacheEntry | None
    lead: RemoteLead | None
    follow: bool


class CacheBooks:
    """What the cache did, per route; read by `/admin/cache` and exported as metrics."""

    RESULTS = ("hit", "miss", "coalesced", "bypass")

    def __init__(self) -> None:
        self.results: dict[tuple[str, str], int] = {}
        self.served_bytes = 0
        self.stored_bytes = 0
        self.stored = 0
        self.not_stored: dict[str, int] = {}
        self.write_failures = 0
        self.corrupt = 0

    def count(self, route: str, result: str) -> None:
        key = (route, result)
        self.results[key] = self.results.get(key, 0) + 1

    def by_route(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for (route, result), n in sorted(self.results.items()):
            table.setdefault(route, dict.fromkeys(self.RESULTS, 0))[result] = n
        return table


class ResponseCache:
    """The store, the table of flights in progress, and the counters of one gateway process."""

    def __init__(
        self,
        config: CacheConfig,
        redis: RedisConfig | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.books = CacheBooks()
        self.flights = FlightTable()
        self.remote: RemoteFlights | None = None
        use_redis = config.store == "redis" or (config.store == "auto" and redis is not None)
        self.store: CacheStore
        if use_redis:
            assert redis is not None  # the config check refuses store: redis without a redis section
            redis_store = RedisStore(redis, max_entry_bytes=config.max_entry_bytes,
                                     budget_s=config.budget_ms / 1000, retry_s=config.retry_s)
            self.store = redis_store
            self.remote = RemoteFlights(redis_store, lock_ttl_s=config.lock_ttl_s)
        else:
            self.store = InProcessLRU(max_bytes=config.max_bytes, max_entry_bytes=config.max_entry_bytes)

    @property
    def follower_timeout_s(self) -> float:
        return self.config.follower_timeout_s

    def count(self, route: str, result: str) -> None:
        """One request's cache result: hit, miss, coalesced or bypass (exported as metrics at scrape time)."""
        self.books.count(route, result)

    async def lookup(self, plan: CachePlan) -> CacheEntry | None:
        """The stored answer for `plan`, or None (absent, expired, unreadable, or the store did not answer)."""
        return self._decode(await self.store.get(plan.store))

    async def claim(self, plan: CachePlan) -> Claimed:
        """The stored answer, or the right to answer (a lead), or word that another replica answers.

        With Redis the lookup and the lock are one round trip; the in-process store has no replicas
        to agree with, so a miss there is always a (local) lead.
        """
        remote = self.remote
        if remote is None:
            return Claimed(await self.lookup(plan), None, follow=False)
        claim = await remote.claim(plan.digest, plan.store)
        if claim.stored is not None:
            entry = self._decode(claim.stored)
            if entry is not None:
                return Claimed(entry, None, follow=False)
            claim = await remote.claim(plan.digest, None)  # unreadable: answer it afresh, and overwrite it
        return Claimed(None, claim.lead, follow=claim.lead is None)

    def _decode(self, data: bytes | None) -> CacheEntry | None:
        if data is None:
            return None
        entry = decode_entry(data)
        if entry is None:
            # Written by another version of the gateway, or damaged: a miss, and overwritten on this answer.
            self.books.corrupt += 1
            return None
        self.books.served_bytes += len(data)
        return entry

    async def save(
        self, plan: CachePlan, entry: CacheEntry, route: RouteCacheConfig, lead: RemoteLead | None = None
    ) -> str:
        """Store a complete answer if the plan and the answer allow, and end `lead` (its followers get the
        answer; with Redis one script does both); what happened, for logs and tests."""
        data: bytes | None = None
        if not plan.write:
            outcome = "not stored: the request said no-store"
        elif (reason := unstorable_reason(entry, store_length=route.store_length)) is not None:
            self._not_stored(reason)
            outcome = f"not stored: {reason}"
        elif len(data := encode_entry(entry)) > self.config.max_entry_bytes:
            self._not_stored("too large")
            data, outcome = None, "not stored: too large"
        else:
            outcome = "stored"
        if lead is not None and lead.shared:
            written = await lead.complete(entry, store=(plan.store, plan.ttl_s) if data is not None else None)
        elif data is not None:
            written = await self.store.set(plan.store, data, plan.ttl_s)
        else:
            return outcome
        if data is None:
            return outcome
        if not written:
            self.books.write_failures += 1
            return "not stored: the store did not take it"
        self.books.stored += 1
        self.books.stored_bytes += len(data)
        return outcome

    def _not_stored(self, reason: str) -> None:
        self.books.not_stored[reason] = self.books.not_stored.get(reason, 0) + 1

    async def delete(self, *, model: str | None = None, tenant: str | None = None) -> int:
        """Drop every entry, one model's, one tenant's, or one tenant's for one model; how many.
        Raises `CacheStoreError` when the store cannot be reached."""
        return await self.store.delete_matching(entry_pattern(model, tenant))

    def stats(self) -> dict[str, Any]:
        """Everything `/admin/cache` and `gateway cache stats` show."""
        store = self.store
        books = self.books
        report: dict[str, Any] = {
            "store": store.describe(),
            "available": bool(getattr(store, "available", True)),
            "routes": books.by_route(),
            "stored": books.stored,
            "stored_bytes": books.stored_bytes,
            "served_bytes": books.served_bytes,
            "not_stored": dict(sorted(books.not_stored.items())),
            "write_failures": books.write_failures,
            "unreadable_entries": books.corrupt,
            "flights_in_progress": len(self.flights),
        }
        if isinstance(store, InProcessLRU):
            report.update(entries=len(store), size_bytes=store.size_bytes, max_bytes=store.max_bytes,
                          evictions=store.evictions)
        if isinstance(store, RedisStore):
            report.update(errors=store.errors, skipped_while_down=store.skipped_while_down)
        return report

    async def aclose(self) -> None:
        if self.remote is not None:
            await self.remote.aclose()
        await self.store.aclose()
