"""Single-flight across gateway replicas, through the response cache's Redis.

A replica that misses the cache takes `lock:<digest>` (SET NX PX) and becomes the leader; the others
follow it by reading `flight:<digest>`, a Redis stream of the leader's messages, into a local `Flight`.
The stream opens with a start message naming the leader and its lead token, then one message per
payload, then an end message (the encoded entry) or a fail message; it expires a while after the
last write, so nothing stays behind. Every write is a Lua script that first checks that the lock and
the stream are still this lead's, so a leader that lost its lock (it stalled past the lock's TTL and
someone else took over) can never write into, or release, its successor's flight.

Everything runs on the `RedisStore`'s connection pool and behind its breaker and time budget: when
Redis is away, a replica simply answers from its backend, alone, as it would without the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from functools import partial
from typing import Any

from gateway.cache.entry import CacheEntry, decode_entry, encode_entry
from gateway.cache.flight import Flight
from gateway.cache.redis_guard import RedisCallFailed
from gateway.cache.stores import RedisStore

__all__ = ["RemoteFlights", "RemoteLead"]

log = logging.getLogger("gateway.cache")

# How long a flight stream outlives its last write: long enough for a slow follower to read the end.
_LINGER_S = 60.0
# Payloads per write script: one round trip each, short enough never to hold Redis for long.
_WRITE_BATCH = 256
# Stream entries per read.
_READ_BATCH = 512

# Message types in the stream (field `t`).
_START, _PAYLOAD, _END, _FAIL = b"s", b"p", b"e", b"f"

# KEYS: lock, stream. ARGV: owner, lock ttl ms, lead token, stream ttl ms.
# Takes the lock and opens a fresh stream: an old flight's leftovers must not be read as this one's.
_LEAD = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[2], '*', 't', 's', 'o', ARGV[1], 'l', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""

# KEYS: lock, stream. ARGV: owner, lead token, stream ttl ms, lock ttl ms ('0': release the lock),
# then (type, data) pairs to append. Writes and refreshes only while the lock is the owner's and the
# stream opens with this lead's token (compare-and-set: never another lead's lock or stream).
_WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
if not first or first[2][6] ~= ARGV[2] then return 0 end
for i = 5, #ARGV, 2 do
  redis.call('XADD', KEYS[2], '*', 't', ARGV[i], 'd', ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if ARGV[4] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
"""


def default_owner() -> str:
    """An id for this process's leads: readable in Redis (host, pid), unique by its random tail."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class RemoteFlights:
    """Leads and follows flights shared by every replica on the `RedisStore`'s Redis.

    `lock_ttl_s` is how long a dead leader's lock outlives it (a live leader refreshes it every
    third of that); `poll_s` how long a follower's blocking read waits before it checks the lock.
    """

    def __init__(
        self, store: RedisStore, *, lock_ttl_s: float = 10.0, poll_s: float = 0.5, owner: str | None = None
    ) -> None:
        self.store = store
        self.lock_ttl_s = lock_ttl_s
        self.poll_s = poll_s
        self.owner = owner if owner is not None else default_owner()
        self.guard = store.guard
        self.clock = store.clock
        self.lost_leads = 0  # leads whose stream could not be written to the end (followers went alone)
        self._lead_script = store.redis.register_script(_LEAD)
        self._write_script = store.redis.register_script(_WRITE)
        self._lock_ms = max(1, int(lock_ttl_s * 1000))
        self._stream_ms = int((lock_ttl_s + _LINGER_S) * 1000)
        self._leads: set[RemoteLead] = set()
        self._undoing: set[asyncio.Task[None]] = set()

    def lock_key(self, digest: str) -> str:
        return f"{self.store.key_prefix}lock:{digest}"

    def stream_key(self, digest: str) -> str:
        return f"{self.store.key_prefix}flight:{digest}"

    async def lead(self, digest: str) -> RemoteLead | None:
        """None when another replica leads `digest` (follow it); otherwise a lead, `shared` when this
        replica took the lock, a no-op one when Redis cannot be used now. Never raises."""
        token = secrets.token_hex(8)
        keys = [self.lock_key(digest), self.stream_key(digest)]
        args: list[str | int] = [self.owner, self._lock_ms, token, self._stream_ms]
        try:
            took = await self.guard.call("flight lock", lambda: self._lead_script(keys=keys, args=args))
        except RedisCallFailed as err:
            if err.__cause__ is not None:
                self._undo(digest, token)  # it may have taken the lock unseen: others would wait on it
            return RemoteLead(None, digest, token)
        except asyncio.CancelledError:
            self._undo(digest, token)
            raise
        except Exception:  # a bug must cost coalescing, never the request
            log.exception("response cache: taking the flight lock for %s failed", digest)
            return RemoteLead(None, digest, token)
        if not took:
            return None
        lead = RemoteLead(self, digest, token)
        self._leads.add(lead)
        return lead

    async def follow(self, digest: str, into: Flight, idle_timeout_s: float) -> bool:
        """Copy the remote leader's payloads into `into` and complete it with the leader's entry: True.

        False, leaving `into` as it is, when the leader failed or vanished (its lock gone without an
        end), Redis failed, or nothing new arrived within `idle_timeout_s`. Reads the stream from its
        start, so a late follower sees every payload. Never raises, except `CancelledError`.
        """
        try:
            return await self._follow(digest, into, idle_timeout_s)
        except RedisCallFailed:
            return False
        except Exception:
            log.exception("response cache: following the flight for %s failed", digest)
            return False

    async def aclose(self) -> None:
        """Abort the leads still open (their followers go to their backends); the store is closed by its owner."""
        for lead in list(self._leads):
            await lead.abort("gateway closing")
        for task in list(self._undoing):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task

    async def _write(
        self, digest: str, token: str, messages: list[tuple[bytes, bytes]], *, final: bool = False, guarded: bool = True
    ) -> bool:
        """One write script call for a lead; False when it failed or the lock or stream is no longer the lead's.
        `final` releases the lock instead of refreshing it."""
        keys = [self.lock_key(digest), self.stream_key(digest)]
        args: list[bytes | str | int] = [self.owner, token, self._stream_ms, 0 if final else self._lock_ms]
        for kind, data in messages:
            args += (kind, data)
        if not guarded:
            return bool(await self._write_script(keys=keys, args=args))
        try:
            done = await self.guard.call("flight write", lambda: self._write_script(keys=keys, args=args))
        except RedisCallFailed:
            return False
        return bool(done)

    def _undo(self, digest: str, token: str) -> None:
        """In the background, fail and release a lock that `lead` may have taken without hearing so."""

        async def undo() -> None:
            # Past the breaker (it has just opened) but bounded: Redis may be on its way down.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.lock_ttl_s):
                    await self._write(digest, token, [(_FAIL, b"leader gave up")], final=True, guarded=False)

        task = asyncio.create_task(undo(), name=f"flight-undo-{digest[:12]}")
        self._undoing.add(task)
        task.add_done_callback(self._undoing.discard)

    async def _follow(self, digest: str, into: Flight, idle_timeout_s: float) -> bool:
        redis = self.store.redis
        lock, stream = self.lock_key(digest), self.stream_key(digest)
        budget_s = self.guard.budget_s
        last: bytes = b"0-0"
        leader: bytes | None = None
        deadline = self.clock() + idle_timeout_s
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return False
            # XREAD BLOCK 0 would block forever: never less than a millisecond.
            block_ms = max(1, int(min(self.poll_s, remaining) * 1000))
            reply = await self.guard.call(
                "flight read",
                partial(redis.xread, {stream: last}, count=_READ_BATCH, block=block_ms),
                budget_s=block_ms / 1000 + budget_s,
            )
            entries = _entries(reply)
            if not entries:
                # Quiet for a poll: is the leader still there? The lock is read before the stream,
                # so an end written just before the lock was released is seen too.
                holder, reply = await self.guard.call("flight check", partial(self._check, lock, stream, last))
                entries = _entries(reply)
                if not entries:
                    if holder is None or (leader is not None and holder != leader):
                        return False
                    continue
            for entry_id, fields in entries:
                last = entry_id
                kind = fields.get(b"t")
                if kind == _PAYLOAD:
                    into.publish(fields.get(b"d", b""))
                elif kind == _START:
                    if leader is not None:
                        return False  # a new lead replaced the one followed: its payloads start over
                    leader = fields.get(b"o")
                elif kind == _END:
                    entry = decode_entry(fields.get(b"d", b""))
                    if entry is None:
                        return False  # another gateway version's entry: go to the backend
                    into.complete(entry)
                    return True
                elif kind == _FAIL:
                    return False
            deadline = self.clock() + idle_timeout_s

    async def _check(self, lock: str, stream: str, last: bytes) -> list[Any]:
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.get(lock)
        pipe.xread({stream: last}, count=_READ_BATCH)
        result: list[Any] = await pipe.execute()
        return result


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of a one-stream XREAD reply, in RESP2 (list) or RESP3 (dict) shape."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (item[1:] for item in reply)
    found: list[tuple[bytes, dict[bytes, bytes]]] = []
    for messages in streams:
        # RESP3 wraps the list once more; RESP2's item[1:] is [messages].
        for batch in messages:
            found.extend(batch)
    return found


class RemoteLead:
    """This replica's lead of one flight; `shared` False for a no-op lead (Redis unusable, go alone).

    `publish` only queues: a background task writes queued payloads in batches (one script call each,
    order kept) and, when there is nothing to write, refreshes the lock every third of its TTL. Writing
    failures are booked on the store's guard and end the sharing (followers go to their backends);
    they never reach the request.
    """

    def __init__(self, flights: RemoteFlights | None, digest: str, token: str) -> None:
        self.shared = flights is not None
        self.digest = digest
        self._flights = flights
        self._token = token
        self._pending: list[bytes] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._finished = not self.shared
        self._broken = False
        self._task: asyncio.Task[None] | None = None
        if flights is not None:
            self._task = asyncio.create_task(self._run(flights), name=f"flight-lead-{digest[:12]}")

    def publish(self, payload: bytes) -> None:
        """Queue one payload for the followers; never blocks, never raises."""
        if self._closing or self._broken:
            return
        self._pending.append(payload)
        self._wake.set()

    async def complete(self, entry: CacheEntry) -> None:
        """Flush, append the end message carrying the entry, release the lock. Never raises."""
        await self._finish(_END, encode_entry(entry))

    async def abort(self, reason: str) -> None:
        """Flush, append a fail message, release the lock. Never raises."""
        await self._finish(_FAIL, reason.encode())

    def _halt(self) -> None:
        """Stop every background write without a word to Redis: what a crashed leader looks like."""
        self._finished = self._closing = True
        if self._task is not None:
            self._task.cancel()
        if self._flights is not None:
            self._flights._leads.discard(self)

    async def _finish(self, kind: bytes, data: bytes) -> None:
        if self._finished or self._flights is None:
            return
        self._finished = self._closing = True
        self._wake.set()
        flights = self._flights
        try:
            if self._task is not None:
                await self._task  # drains what is queued, so the end comes after every payload
            if not self._broken:
                if not await flights._write(self.digest, self._token, [(kind, data)], final=True):
                    flights.lost_leads += 1
        except Exception:
            log.exception("response cache: ending the flight for %s failed", self.digest)
        finally:
            flights._leads.discard(self)

    async def _run(self, flights: RemoteFlights) -> None:
        interval = flights.lock_ttl_s / 3
        refreshed = flights.clock()
        try:
            while True:
                if not self._pending and not self._closing:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, refreshed + interval - flights.clock())):
                            await self._wake.wait()
                if self._pending:
                    batch = self._pending[:_WRITE_BATCH]
                    del self._pending[:_WRITE_BATCH]
                    ok = await flights._write(self.digest, self._token, [(_PAYLOAD, payload) for payload in batch])
                elif self._closing:
                    return
                elif flights.clock() - refreshed >= interval:
                    ok = await flights._write(self.digest, self._token, [])  # nothing to say: keep the lock alive
                else:
                    continue
                if not ok:
                    break
                refreshed = flights.clock()
        except Exception:
            log.exception("response cache: writing the flight for %s failed", self.digest)
        # Lost: the payloads already queued will never all reach Redis. Tell the followers if Redis
        # still listens; otherwise the lock, no longer refreshed, lapses and they stop waiting.
        self._broken = True
        self._pending.clear()
        flights.lost_leads += 1
        with contextlib.suppress(Exception):
            await flights._write(self.digest, self._token, [(_FAIL, b"leader lost its flight stream")], final=True)
