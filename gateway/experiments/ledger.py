"""Which arm served which request, so feedback posted later (`POST /v1/feedback`) lands on that arm.

Every request in an experiment is `remember`ed on the hot path; `take` joins a feedback's
request id back to its (experiment, arm) exactly once: the first `take` wins, later ones report
`already_used` (the API answers 409), an unknown or expired id is simply not found (404).
Entries are per tenant, so one tenant cannot post feedback on (or probe for) another's requests.

Redis layout (`p` is `key_prefix`, `gateway:{exp}:` by default: the hash tag of every experiment key, so on
Redis Cluster one flush script can write every request's entry; names percent-escaped so ':' cannot collide):

    {p}req:{tenant}:{request_id}   STRING  msgspec JSON `["experiment", "arm"]`, or `used` once taken;
                                           expires `ttl_s` after `remember` (the marker keeps that TTL)

`remember` never waits: `RedisLedger` buffers entries and a background task writes them every
`flush_interval_s` as one pipeline. Until then `take` on the same replica finds them in the buffer.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import msgspec

from gateway.cache.redis_guard import RedisCallFailed
from gateway.config import RedisConfig
from gateway.experiments.redis_writer import EXPERIMENT_KEY_PREFIX, FlushedRedisWriter
from gateway.redis_connect import key_segment, with_hash_tag

log = logging.getLogger("gateway.experiments")

Clock = Callable[[], float]

# Stored in place of the entry once its feedback was accepted. A real entry is a JSON array, so it
# always starts with '[' and can never be mistaken for this marker.
USED_MARKER = b"used"

# Returns what was stored before: nil (unknown or expired), the marker (already taken) or the
# entry, which it replaces by the marker in the same step so two replicas cannot both take it.
# KEEPTTL: taking feedback must not extend how long the request is remembered.
_TAKE_LUA = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL') end
return v
"""

# One flush as one script call: a pipeline of one SET per request cost the event loop ~17 µs of
# packing per entry (5 ms for 300). ARGV[1] is a JSON list of [value, milliseconds to live, nx]
# for KEYS in order; nx "1" writes only a key that does not exist yet.
_WRITE_LUA = """
local entries = cjson.decode(ARGV[1])
for i, key in ipairs(KEYS) do
  local e = entries[i]
  if e[3] == '1' then
    redis.call('SET', key, e[1], 'PX', e[2], 'NX')
  else
    redis.call('SET', key, e[1], 'PX', e[2])
  end
end
return #KEYS
"""


class LedgerUnavailable(Exception):
    """`take` could not reach the store (Redis away, breaker open, or over budget)."""


class Taken(msgspec.Struct, frozen=True):
    """What `take` found: `found` is (experiment, arm) for the first take of a known request;
    `already_used` is True when an earlier take accepted feedback for it. Neither: unknown or expired."""

    found: tuple[str, str] | None = None
    already_used: bool = False


class FeedbackLedger(Protocol):
    """Request id to serving arm, per tenant, for a limited time. `remember` never blocks or raises."""

    def remember(self, request_id: str, tenant: str, experiment: str, arm: str) -> None: ...
    async def take(self, request_id: str, tenant: str) -> Taken: ...
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...


class _Entry:
    """One remembered request: when it was remembered, and its arm (None once taken)."""

    __slots__ = ("at", "served")

    def __init__(self, at: float, served: tuple[str, str] | None) -> None:
        self.at = at
        self.served = served


class InProcessLedger:
    """The ledger of this process only (the embedded default, and the reference the Redis one must match).

    At most `max_entries` requests are kept, the oldest evicted first; every entry, taken or not,
    is forgotten `ttl_s` after `remember`.
    """

    def __init__(self, ttl_s: float, max_entries: int = 200_000, clock: Clock = time.monotonic) -> None:
        self.ttl_s, self.max_entries, self.clock = ttl_s, max_entries, clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        # Insertion order is expiry order (one TTL, a monotonic clock), so expired entries are at the front.
        while self._entries:
            entry = next(iter(self._entries.values()))
            if entry.at + self.ttl_s > now:
                return
            self._entries.popitem(last=False)

    def remember(self, request_id: str, tenant: str, experiment: str, arm: str) -> None:
        now = self.clock()
        self._expire(now)
        key = (tenant, request_id)
        if key in self._entries:
            return  # the first remember wins, as in Redis (SET NX): a retry must not revive a used entry
        while len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
        self._entries[key] = _Entry(now, (experiment, arm))

    async def take(self, request_id: str, tenant: str) -> Taken:
        self._expire(self.clock())
        entry = self._entries.get((tenant, request_id))
        if entry is None:
            return Taken()
        if entry.served is None:
            return Taken(already_used=True)
        found, entry.served = entry.served, None
        return Taken(found=found)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _encode(served: tuple[str, str]) -> bytes:
    return msgspec.json.encode(served)


_decoder = msgspec.json.Decoder(tuple[str, str])


class RedisLedger(FlushedRedisWriter):
    """A ledger shared by every replica through one Redis (layout in the module docstring).

    `remember` only adds to a local buffer (at most `max_pending` entries, the oldest dropped first
    and counted in `dropped`); a `PeriodicTask` writes it every `flush_interval_s`. `take` looks in
    that buffer first, then asks Redis with one script, and raises `LedgerUnavailable` when Redis
    cannot answer, rather than a "not found" that would wrongly tell the client its id is unknown.
    """

    def __init__(self, redis: RedisConfig, ttl_s: float, *, key_prefix: str = EXPERIMENT_KEY_PREFIX,
                 flush_interval_s: float = 0.1, budget_s: float = 0.25, retry_s: float = 1.0,
                 max_pending: int = 100_000, clock: Clock = time.monotonic) -> None:
        super().__init__(redis, what="feedback ledger", flush_interval_s=flush_interval_s,
                         budget_s=budget_s, retry_s=retry_s)
        self.ttl_s, self.max_pending, self.clock = ttl_s, max_pending, clock
        self.key_prefix = with_hash_tag(key_prefix)
        self.dropped = 0
        self._take_script = self.redis.register_script(_TAKE_LUA)
        self._write_script = self.redis.register_script(_WRITE_LUA)
        # Not yet written to Redis, oldest first; an entry taken here stays, as the marker to write.
        self._buffer: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        # `_lock` is held while a flush is in flight, so a `take` of an entry being written waits for
        # the write (then finds it in Redis) or its failure (then finds it back in the buffer).

    @property
    def pending(self) -> int:
        """Entries (and used markers) waiting to be written to Redis."""
        return len(self._buffer)

    def key(self, request_id: str, tenant: str) -> str:
        """The Redis key of one request's entry."""
        return f"{self.key_prefix}req:{key_segment(tenant)}:{key_segment(request_id)}"

    def remember(self, request_id: str, tenant: str, experiment: str, arm: str) -> None:
        key = (tenant, request_id)
        if key in self._buffer:
            return  # the first remember wins (the flush writes with NX for the same reason)
        self._buffer[key] = _Entry(self.clock(), (experiment, arm))
        self._trim()

    def _trim(self) -> None:
        while len(self._buffer) > self.max_pending:
            self._buffer.popitem(last=False)
            self.dropped += 1
            if not self._warned_drop:  # once per outage: the guard already logged the outage itself
                self._warned_drop = True
                log.warning("feedback ledger: more than %d requests waiting for %s, dropping the oldest",
                            self.max_pending, self.describe())

    async def flush(self) -> bool:
        """Write the buffer in one script call; False (entries kept) when Redis did not take it."""
        async with self._lock:
            if not self._buffer:
                return True
            now = self.clock()
            sending, self._buffer = self._buffer, OrderedDict()
            live = OrderedDict((k, e) for k, e in sending.items() if e.at + self.ttl_s > now)
            try:
                if live:
                    await self.guard.call("flush", lambda: self._write(live, now))
            except RedisCallFailed:
                # Back in front of what was remembered meanwhile (older first, so dropped first).
                for key, entry in self._buffer.items():
                    live.setdefault(key, entry)
                self._buffer = live
                self._trim()
                return False
            self._warned_drop = False
            return True

    async def _write(self, entries: OrderedDict[tuple[str, str], _Entry], now: float) -> None:
        keys: list[str] = []
        rows: list[tuple[str, str, str]] = []
        for (tenant, request_id), entry in entries.items():
            # The TTL counts from `remember`, not from the flush, like the in-process ledger.
            left_ms = str(max(1, int((entry.at + self.ttl_s - now) * 1000)))
            keys.append(self.key(request_id, tenant))
            if entry.served is None:
                rows.append((USED_MARKER.decode(), left_ms, "0"))
            else:
                # NX: a flush retried after its reply was lost must not overwrite the used marker
                # another replica wrote in between (that would accept the feedback twice).
                rows.append((_encode(entry.served).decode(), left_ms, "1"))
        await self._write_script(keys=keys, args=[msgspec.json.encode(rows)], client=self.redis)

    async def take(self, request_id: str, tenant: str) -> Taken:
        """The first call for a request returns its arm and marks it used; raises `LedgerUnavailable`."""
        async with self._lock:
            entry = self._buffer.get((tenant, request_id))
            if entry is not None:
                if entry.at + self.ttl_s <= self.clock():
                    del self._buffer[(tenant, request_id)]
                    return Taken()
                if entry.served is None:
                    return Taken(already_used=True)
                # Not in Redis yet, so no other replica can take it: the marker is flushed later.
                found, entry.served = entry.served, None
                return Taken(found=found)
        key = self.key(request_id, tenant)
        try:
            raw = await self.guard.call(
                "take", lambda: self._take_script(keys=[key], args=[USED_MARKER], client=self.redis))
        except RedisCallFailed as err:
            raise LedgerUnavailable(f"feedback ledger unavailable: {err}") from err
        if raw is None:
            return Taken()
        if raw == USED_MARKER:
            return Taken(already_used=True)
        try:
            return Taken(found=_decoder.decode(raw))
        except msgspec.DecodeError:
            log.error("feedback ledger: %s holds a value that is not ours: %r", key, raw[:100])
            return Taken()

    def unflushed(self) -> str:
        return f"{len(self._buffer)} requests"
