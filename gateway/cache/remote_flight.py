"""Single-flight across gateway replicas, through the response cache's Redis.

A replica that misses the cache takes `lock:{<digest>}` and becomes the leader, in the same script
that looked the answer up (one round trip, and an answer stored meanwhile is never missed). The others
follow it by reading `flight:{<digest>}`, a Redis stream of the leader's messages, into a local
`Flight`: a start message naming the leader and its lead token, the payloads, then an end message
(the encoded entry, which the same script stores in the cache) or a fail message. Payloads are only
written once a follower asks for them on the `flight-wanted` channel: most answers have no follower on
another replica, and writing every chunk of every stream to Redis would cost each miss a round trip per
chunk for nobody. Keys carry the digest as a hash tag, so a script's keys share a Redis Cluster slot
(`{prefix}lock:{<digest>}`, `{prefix}flight:{<digest>}`, and the entry `{prefix}e/<model>/<tenant>/{<digest>}`);
the `{prefix}flight-wanted` channel is plain pub/sub, which a cluster delivers to subscribers on every node.

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
from typing import Any, NamedTuple

from redis.asyncio.cluster import RedisCluster

from gateway.cache.entry import decode_entry
from gateway.cache.flight import Flight
from gateway.cache.redis_guard import RedisCallFailed
from gateway.cache.remote_flight_lua import CLAIM, WRITE
from gateway.cache.remote_lead import END, FAIL, PAYLOAD, START, RemoteLead
from gateway.cache.stores import RedisStore

__all__ = ["Claim", "RemoteFlights", "RemoteLead"]

log = logging.getLogger("gateway.cache")

# How long a flight stream outlives its last write: long enough for a slow follower to read the end.
_LINGER_S = 60.0
# Stream entries per read.
_READ_BATCH = 512
# How long a follower's request for payloads waits for the lead it is about to be registered.
_WANTED_EARLY_S = 5.0


class Claim(NamedTuple):
    """What `RemoteFlights.claim` found: the stored answer, or this replica's lead, or neither
    (another replica leads: follow it)."""

    stored: bytes | None
    lead: RemoteLead | None


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
        self._claim_script = store.redis.register_script(CLAIM)
        self._write_script = store.redis.register_script(WRITE)
        self._lock_ms = max(1, int(lock_ttl_s * 1000))
        self._stream_ms = int((lock_ttl_s + _LINGER_S) * 1000)
        self._leads: dict[str, RemoteLead] = {}
        self._undoing: set[asyncio.Task[None]] = set()
        # Digests a follower asked for before this replica's lead was registered (the request and
        # the lead's reply race on two connections), kept briefly.
        self._wanted_early: dict[str, float] = {}
        self._listener: asyncio.Task[None] | None = None

    def lock_key(self, digest: str) -> str:
        return f"{self.store.key_prefix}lock:{{{digest}}}"

    def stream_key(self, digest: str) -> str:
        return f"{self.store.key_prefix}flight:{{{digest}}}"

    @property
    def wanted_channel(self) -> str:
        return f"{self.store.key_prefix}flight-wanted"

    async def lead(self, digest: str) -> RemoteLead | None:
        """`claim` without a cache lookup: None when another replica leads `digest`, else a lead."""
        return (await self.claim(digest, None)).lead

    async def claim(self, digest: str, entry_key: str | None) -> Claim:
        """Look `entry_key` up and, when it is absent, take the lead for `digest`, in one round trip.

        `stored` is the stored value when there is one. Otherwise `lead` is this replica's lead
        (`shared` when it took the lock; a no-op lead when Redis cannot be used now) or None when
        another replica leads (the caller follows). Bounded by the store's budget; never raises.
        """
        self._listen()
        token = secrets.token_hex(8)
        lock = self.lock_key(digest)
        # No entry to look up: the lock key stands in (a key of the same cluster slot, left alone).
        entry = self.store.key_prefix + entry_key if entry_key is not None else lock
        keys = [entry, lock, self.stream_key(digest)]
        args: list[str | int] = [self.owner, self._lock_ms, token, self._stream_ms, 0 if entry_key is None else 1]
        try:
            reply = await self.guard.call("lookup and lock", lambda: self._claim_script(keys=keys, args=args))
        except RedisCallFailed as err:
            if err.__cause__ is not None:
                self._undo(digest, token)  # it may have taken the lock unseen: others would wait on it
            return Claim(None, RemoteLead(None, digest, token))
        except asyncio.CancelledError:
            self._undo(digest, token)
            raise
        except Exception:  # a bug must cost coalescing, never the request
            log.exception("response cache: taking the flight lock for %s failed", digest)
            return Claim(None, RemoteLead(None, digest, token))
        outcome = int(reply[0])
        if outcome == 1:
            return Claim(bytes(reply[1]), None)
        if outcome != 2:
            return Claim(None, None)
        lead = RemoteLead(self, digest, token)
        self._leads[digest] = lead
        if self._wanted_early.pop(digest, None) is not None:
            lead.share()
        return Claim(None, lead)

    async def follow(self, digest: str, into: Flight, idle_timeout_s: float) -> bool:
        """Copy the remote leader's payloads into `into` and complete it with the leader's entry: True.

        False, leaving `into` as it is, when the leader failed or vanished (its lock gone without an
        end), Redis failed, or nothing new arrived within `idle_timeout_s`. Reads the stream from its
        start, so a late follower sees every payload. Never raises, except `CancelledError`.
        """
        try:
            # Ask the leader to stream its payloads (it writes none until someone follows).
            await self.guard.call("flight wanted", partial(self.store.redis.publish, self.wanted_channel, digest))
            return await self._follow(digest, into, idle_timeout_s)
        except RedisCallFailed:
            return False
        except Exception:
            log.exception("response cache: following the flight for %s failed", digest)
            return False

    async def aclose(self) -> None:
        """Abort the leads still open (their followers go to their backends); the store is closed by its owner."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait({self._listener}, timeout=2.0)
        for lead in list(self._leads.values()):
            await lead.abort("gateway closing")
        for task in list(self._undoing):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task

    async def _write(
        self, digest: str, token: str, messages: list[tuple[bytes, bytes]], *, final: bool = False,
        guarded: bool = True, store: tuple[str, float] | None = None,
    ) -> bool:
        """One write script call for a lead; False when it failed or the lock or stream is no longer the lead's.
        `final` releases the lock instead of refreshing it; `store` (entry key, ttl) also stores the data of
        the last message under that key."""
        lock = self.lock_key(digest)
        entry = self.store.key_prefix + store[0] if store is not None else lock  # entry ttl 0: not written
        keys = [lock, self.stream_key(digest), entry]
        ttl_ms = max(1, int(store[1] * 1000)) if store is not None else 0
        args: list[bytes | str | int] = [self.owner, token, self._stream_ms, 0 if final else self._lock_ms, ttl_ms]
        for kind, data in messages:
            args += (kind, data)
        if not guarded:
            return bool(await self._write_script(keys=keys, args=args))
        try:
            done = await self.guard.call("flight write", lambda: self._write_script(keys=keys, args=args))
        except RedisCallFailed:
            return False
        return bool(done)

    def _listen(self) -> None:
        """Start listening for followers' requests for payloads (once, on the first claim)."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen_forever(), name="flight-wanted")

    async def _listen_forever(self) -> None:
        while True:
            client = self.store.redis
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                if isinstance(client, RedisCluster):
                    # The cluster client's pub/sub picks a node from the slot map but does not load the
                    # map itself: load it first (a no-op once loaded), or the first subscribe fails.
                    await client.initialize()
                await pubsub.subscribe(self.wanted_channel)
                async for message in pubsub.listen():
                    self._wanted(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as err:  # Redis away: the breaker logs it; followers then get only the end
                log.debug("response cache: flight-wanted listener: %s", err)
            finally:
                # Bounded: closing a subscription cancelled mid-connect can wait on that connect.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await pubsub.aclose()
            await asyncio.sleep(self.store.guard.retry_s)

    def _wanted(self, data: Any) -> None:
        if not isinstance(data, bytes):
            return
        digest = data.decode("ascii", "replace")
        lead = self._leads.get(digest)
        if lead is not None:
            lead.share()
            return
        now = self.clock()
        self._wanted_early = {d: t for d, t in self._wanted_early.items() if now - t < _WANTED_EARLY_S}
        self._wanted_early[digest] = now

    def _undo(self, digest: str, token: str) -> None:
        """In the background, fail and release a lock that `lead` may have taken without hearing so."""

        async def undo() -> None:
            # Past the breaker (it has just opened) but bounded: Redis may be on its way down.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.lock_ttl_s):
                    await self._write(digest, token, [(FAIL, b"leader gave up")], final=True, guarded=False)

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
                if kind == PAYLOAD:
                    into.publish(fields.get(b"d", b""))
                elif kind == START:
                    if leader is not None:
                        return False  # a new lead replaced the one followed: its payloads start over
                    leader = fields.get(b"o")
                elif kind == END:
                    entry = decode_entry(fields.get(b"d", b""))
                    if entry is None:
                        return False  # another gateway version's entry: go to the backend
                    into.complete(entry)
                    return True
                elif kind == FAIL:
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
