"""Routing state shared by every gateway replica through Redis.

Every replica of the gateway sees the same statistics, in-flight counts and breaker
states. The request path never waits for Redis, except to claim a half-open breaker's probe:
each update is applied to this replica's in-process state at once and queued, and one
background task sends the queue to Redis and reads back every backend's shared state in a
single round trip every `refresh_s`. Reads come from that mirror while Redis answers and from
the in-process state while it does not, so losing Redis degrades routing to per-replica
decisions instead of stopping it. Updates are Lua scripts run inside Redis
(`gateway/routing/shared_lua.py`), never a read-modify-write from Python.

Every key lives under one hash tag (`gateway:{routing}:...` by default; see `RedisKeys`), so on
Redis Cluster the whole state sits in one slot: the sync's pipeline goes to one node and the prune
script may name every key it touches. The state is small (a few hashes per backend), so one slot is
no hot spot worth splitting it for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from gateway.backend import BackendLoad
from gateway.config import RedisConfig, RoutingConfig
from gateway.redis_connect import REDIS_ERRORS, RedisClient, connect_redis, describe_redis
from gateway.routing.breaker import PROBE_LEASE_S, BreakerRecord, LocalBreakers
from gateway.routing.interfaces import Admission, BackendStats, Breakers, BreakerSnapshot, RoutingStats
from gateway.routing.shared_lua import SCRIPTS, RedisKeys, breaker_from_hash, breaker_from_reply, stats_from_hash
from gateway.routing.shared_views import SharedBreakers, SharedStats
from gateway.routing.stats import LocalStats

log = logging.getLogger("gateway.routing")

Clock = Callable[[], float]
SharedChange = Callable[[bool], None]
# A queued update: script name, key, and the script's arguments (the clock time first).
_Update = tuple[str, str, tuple[float | int | str, ...]]


class RedisRoutingState:
    """Routing state shared by every gateway replica through one Redis.

    In-flight counts are one hash field per replica per backend, written with this replica's own
    count (only it writes that field, so a lost update or a Redis restart heals at the next
    sync); a replica that stops syncing for `replica_ttl_s` is left out of the totals. Breaker
    records this replica makes are applied to its mirror at once, so its own decisions are never
    behind its own failures. While Redis is away updates queue up (at most `max_pending`, the
    oldest dropped first) and are replayed with their original times when it returns.
    `on_shared_change` hears the first outcome (True once synced, False if Redis cannot be
    reached) and every change after it.
    """

    shared: bool = True

    def __init__(
        self,
        redis: RedisConfig,
        backends: Sequence[str],
        config: RoutingConfig,
        *,
        clock: Clock = time.time,
        replica_id: str | None = None,
        key_prefix: str = "gateway:{routing}",
        refresh_s: float = 0.1,
        on_shared_change: SharedChange | None = None,
        replica_ttl_s: float = 5.0,
        retry_s: float = 1.0,
        socket_timeout_s: float = 0.25,
        max_pending: int = 10_000,
        probe_lease_s: float = PROBE_LEASE_S,
    ) -> None:
        self.redis_config = redis
        self.config = config
        self.clock = clock
        self.replica_id = replica_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.refresh_s = refresh_s
        self.replica_ttl_s = replica_ttl_s
        self.retry_s = retry_s
        self.probe_lease_s = probe_lease_s
        self.keys = RedisKeys(key_prefix)
        self.local_stats = LocalStats(config.stats.half_life_s, clock)
        self.local_breakers = LocalBreakers(config.breaker, clock, probe_lease_s=probe_lease_s)
        self.stats: RoutingStats = SharedStats(self)
        self.breakers: Breakers = SharedBreakers(self)
        self._on_shared_change = on_shared_change
        self._socket_timeout_s = socket_timeout_s
        self._backends: list[str] = list(dict.fromkeys(backends))
        self._redis: RedisClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._shas: dict[str, str] = {}
        self._shared_ok = False
        self._reported: bool | None = None
        self._pending: deque[_Update] = deque(maxlen=max(1, max_pending))
        self._dropped = 0
        self._own: dict[str, int] = {}  # this replica's open requests per backend
        self._dirty: set[str] = set()  # backends whose own count Redis has not seen yet
        self._loads: dict[str, BackendLoad] = {}
        self._mirror_stats: dict[str, dict[str, str]] = {}
        self._mirror_breakers: dict[str, BreakerRecord] = {}
        self._others_in_flight: dict[str, int] = {}
        # Bumped by every local breaker change, so a refresh that was in flight meanwhile does
        # not overwrite it with what Redis held before.
        self._breaker_epoch: dict[str, int] = {}
        self._last_full_sync = float("-inf")
        self._last_prune = float("-inf")

    @property
    def shared_ok(self) -> bool:
        return self._shared_ok

    def describe(self) -> str:
        return describe_redis(self.redis_config)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and sync once (so the first requests route on shared state), then keep syncing.
        Never fails for an unreachable Redis: routing starts on local state and retries."""
        if self._task is not None:
            return
        self._redis = connect_redis(self.redis_config, decode_responses=True, socket_timeout_s=self._socket_timeout_s)
        await self._sync_once()
        self._task = asyncio.create_task(self._run(), name="shared-routing-state")

    async def aclose(self) -> None:
        """Stop syncing; send what is queued and withdraw this replica's counts if Redis answers."""
        task, self._task = self._task, None
        self._closing = True
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._redis = self._redis, None
        if client is None:
            return
        try:
            if self._shared_ok:
                async with asyncio.timeout(2 * self._socket_timeout_s + 0.5):
                    await self._sync(client)
                    pipe = client.pipeline(transaction=False)
                    for backend in self._backends:
                        pipe.hdel(self.keys.in_flight(backend), self.replica_id)
                    pipe.zrem(self.keys.replicas, self.replica_id)
                    await pipe.execute()
        except REDIS_ERRORS as err:  # Redis away, slow or unroutable: local state for now
            log.debug("shared routing state: could not withdraw replica %s: %s", self.replica_id, err)
        finally:
            await client.aclose()

    async def _run(self) -> None:
        # The flag as well as the cancel: redis-py can swallow a cancellation that lands while
        # it reads a reply, and this loop must still end.
        while not self._closing:
            await asyncio.sleep(self.refresh_s if self._shared_ok else self.retry_s)
            if not self._closing:
                await self._sync_once()

    async def _sync_once(self) -> None:
        assert self._redis is not None
        try:
            await self._sync(self._redis)
        except REDIS_ERRORS as err:
            self._mark_down(err)
        except Exception as err:  # a bug must not end the loop: routing would silently stop sharing
            log.exception("shared routing state: sync failed")
            self._mark_down(err)
        else:
            self._mark_up()

    def _mark_down(self, err: BaseException) -> None:
        self._shas.clear()  # a Redis that comes back may be a fresh one, without our scripts
        if self._reported is False:
            return
        self._shared_ok = False
        self._reported = False
        log.warning("shared routing state unavailable (%s at %s: %s); routing on this replica's local state",
                    type(err).__name__, self.describe(), err)
        self._notify(False)

    def _mark_up(self) -> None:
        if self._reported is True:
            return
        first = self._reported is None
        self._shared_ok = True
        self._reported = True
        if first:
            log.info("routing state shared through %s (replica %s)", self.describe(), self.replica_id)
        else:
            dropped = f"; {self._dropped} updates made meanwhile were dropped" if self._dropped else ""
            log.info("shared routing state at %s is reachable again; routing on shared state%s",
                     self.describe(), dropped)
        self._dropped = 0
        self._notify(True)

    def _notify(self, ok: bool) -> None:
        if self._on_shared_change is None:
            return
        try:
            self._on_shared_change(ok)
        except Exception:
            log.exception("shared routing state: on_shared_change callback failed")

    # -- the sync: one round trip that writes what is queued and reads everything back ---------

    async def _load_scripts(self, client: RedisClient) -> None:
        if isinstance(client, RedisCluster):
            # SCRIPT LOAD goes to every primary, which a cluster pipeline refuses: one call per script
            # (only at start and after a Redis lost its scripts).
            shas = [await client.script_load(source) for source in SCRIPTS.values()]
        else:
            pipe = client.pipeline(transaction=False)
            for source in SCRIPTS.values():
                pipe.script_load(source)
            shas = await pipe.execute()
        self._shas = dict(zip(SCRIPTS, shas, strict=True))

    async def _sync(self, client: RedisClient) -> None:
        if not self._shas:
            await self._load_scripts(client)
            self._dirty.update(self._own)  # Redis may have lost our counts, or pruned us
        now = self.clock()
        if now - self._last_full_sync >= self.replica_ttl_s:
            self._dirty.update(self._own)
            self._last_full_sync = now
        updates = list(self._pending)
        self._pending.clear()
        dirty, self._dirty = self._dirty, set()
        epochs = dict(self._breaker_epoch)
        backends = list(self._backends)
        keys = self.keys

        pipe = client.pipeline(transaction=False)
        pipe.zadd(keys.replicas, {self.replica_id: now})
        for backend in dirty:
            count = self._own.get(backend, 0)
            if count:
                pipe.hset(keys.in_flight(backend), self.replica_id, count)
            else:
                pipe.hdel(keys.in_flight(backend), self.replica_id)
        for name, key, args in updates:
            # execute_command, not pipe.evalsha: redis-py's cluster pipeline blocks that method (it cannot
            # know the keys share a slot; ours do), while EVALSHA itself is routed by its keys.
            pipe.execute_command("EVALSHA", self._shas[name], 1, key, *args)
        prune = now - self._last_prune >= 6 * self.replica_ttl_s
        if prune:
            in_flight_keys = [keys.in_flight(b) for b in backends]
            pipe.execute_command("EVALSHA", self._shas["prune"], 1 + len(in_flight_keys), keys.replicas,
                                 *in_flight_keys, now - 10 * self.replica_ttl_s)
        pipe.zrangebyscore(keys.replicas, now - self.replica_ttl_s, "+inf")
        for backend in backends:
            pipe.hgetall(keys.stats(backend))
            pipe.hgetall(keys.breaker(backend))
            pipe.hgetall(keys.in_flight(backend))
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BaseException:
            # After a timeout Redis may have run the batch already; sending it again counts a few
            # samples twice, which matters less than losing a breaker opening made while it was away.
            self._requeue(updates)
            self._dirty |= dirty
            raise
        if prune:
            self._last_prune = now

        writes = 1 + len(dirty)
        retry = [update for update, reply in zip(updates, replies[writes:writes + len(updates)], strict=True)
                 if self._failed(update, reply)]
        if retry:
            self._requeue(retry)
            await self._load_scripts(client)
        reads = replies[len(replies) - 1 - 3 * len(backends):]
        if isinstance(reads[0], Exception):
            raise reads[0]
        live = set(reads[0])
        for i, backend in enumerate(backends):
            stats, breaker, in_flight = reads[1 + 3 * i: 4 + 3 * i]
            if isinstance(stats, dict):
                self._mirror_stats[backend] = stats
            if isinstance(breaker, dict) and self._breaker_epoch.get(backend, 0) == epochs.get(backend, 0):
                record = breaker_from_hash(breaker)
                if record is None:
                    self._mirror_breakers.pop(backend, None)
                else:
                    self._mirror_breakers[backend] = record
            if isinstance(in_flight, dict):
                self._others_in_flight[backend] = sum(
                    max(0, int(count)) for replica, count in in_flight.items()
                    if replica != self.replica_id and replica in live
                )

    def _failed(self, update: _Update, reply: Any) -> bool:
        """True when `update` should be sent again (Redis lost the scripts); other errors are logged."""
        if isinstance(reply, NoScriptError):
            return True
        if isinstance(reply, Exception):
            log.error("shared routing state: %s on %s failed: %s", update[0], update[1], reply)
        return False

    def _requeue(self, updates: list[_Update]) -> None:
        """Put unsent updates back in front of newer ones, keeping the newest when it overflows."""
        if not updates:
            return
        limit = self._pending.maxlen or len(updates)
        merged = [*updates, *self._pending]
        self._dropped += max(0, len(merged) - limit)
        self._pending = deque(merged[-limit:], maxlen=limit)

    def _queue(self, name: str, key: str, args: tuple[float | int | str, ...]) -> None:
        if len(self._pending) == self._pending.maxlen:
            self._dropped += 1
        self._pending.append((name, key, args))

    def _know(self, backend: str) -> None:
        if backend not in self._own:
            self._own[backend] = 0
            if backend not in self._backends:
                self._backends.append(backend)

    # -- statistics ----------------------------------------------------------------------------

    def get_stats(self, backend: str) -> BackendStats:
        if not self._shared_ok:
            return self.local_stats.get(backend)
        return stats_from_hash(
            self._mirror_stats.get(backend, {}),
            now=self.clock(),
            half_life_s=self.config.stats.half_life_s,
            in_flight=self._in_flight(backend),
            load=self._loads.get(backend) or BackendLoad(),
        )

    def _in_flight(self, backend: str) -> int:
        return self._others_in_flight.get(backend, 0) + self._own.get(backend, 0)

    def started(self, backend: str) -> None:
        self._know(backend)
        self.local_stats.started(backend)
        self._own[backend] += 1
        self._dirty.add(backend)
        concurrency = self._in_flight(backend) if self._shared_ok else self._own[backend]
        self._queue("started", self.keys.stats(backend),
                    (self.clock(), self.config.stats.half_life_s, concurrency))

    def first_token(self, backend: str, ttft_s: float) -> None:
        self._know(backend)
        self.local_stats.first_token(backend, ttft_s)
        self._queue("first_token", self.keys.stats(backend), (self.clock(), self.config.stats.half_life_s, ttft_s))

    def finished(
        self, backend: str, *, ok: bool | None, e2e_s: float, ttft_s: float | None, output_tokens: int | None
    ) -> None:
        self._know(backend)
        self.local_stats.finished(backend, ok=ok, e2e_s=e2e_s, ttft_s=ttft_s, output_tokens=output_tokens)
        self._own[backend] = max(0, self._own[backend] - 1)
        self._dirty.add(backend)
        if ok is None:
            return  # no sample (the client's fault, or it hung up): only the in-flight count changes
        self._queue("finished", self.keys.stats(backend), (
            self.clock(), self.config.stats.half_life_s, 1 if ok else 0, e2e_s,
            "" if ttft_s is None else ttft_s, "" if output_tokens is None else output_tokens,
        ))

    def observe_load(self, backend: str, load: BackendLoad) -> None:
        # Every replica reads each engine's load itself, so the signal needs no sharing.
        self.local_stats.observe_load(backend, load)
        self._loads[backend] = load

    # -- breakers ------------------------------------------------------------------------------

    def breaker_snapshot(self, backend: str) -> BreakerSnapshot:
        if not self._shared_ok:
            return self.local_breakers.snapshot(backend)
        record = self._mirror_breakers.get(backend)
        return record.snapshot(self.clock()) if record is not None else BreakerSnapshot()

    def admission(self, backend: str) -> Admission:
        if not self._shared_ok:
            return self.local_breakers.admission(backend)
        record = self._mirror_breakers.get(backend)
        return record.admission(self.clock()) if record is not None else "yes"

    def record(self, backend: str, *, ok: bool, hard: bool = False) -> None:
        self._know(backend)
        self.local_breakers.record(backend, ok=ok, hard=hard)
        mirrored = self._mirror_breakers.get(backend)
        if ok and self._shared_ok and (mirrored is None or (not mirrored.opened and mirrored.failures == 0)):
            # A success on a breaker every replica sees closed and clean changes nothing: most
            # requests end here, so skipping the script saves a Redis call per request.
            return
        now = self.clock()
        breaker = self.config.breaker
        if mirrored is None and not ok:
            mirrored = self._mirror_breakers[backend] = BreakerRecord()
        if mirrored is not None:
            mirrored.record(now, ok=ok, hard=hard, config=breaker)
        self._breaker_epoch[backend] = self._breaker_epoch.get(backend, 0) + 1
        self._queue("breaker_record", self.keys.breaker(backend), (
            now, 1 if ok else 0, 1 if hard else 0, breaker.failures, breaker.open_s, breaker.max_open_s,
        ))

    def release_probe(self, backend: str) -> None:
        self._know(backend)
        self.local_breakers.release_probe(backend)
        mirrored = self._mirror_breakers.get(backend)
        if mirrored is not None:
            mirrored.release_probe()
        self._breaker_epoch[backend] = self._breaker_epoch.get(backend, 0) + 1
        self._queue("breaker_release", self.keys.breaker(backend), ())

    async def acquire_probe(self, backend: str) -> bool:
        """Claim the probe in Redis, so one replica's request probes per window; on local state
        when Redis is away."""
        client = self._redis
        if not self._shared_ok or client is None:
            return await self.local_breakers.acquire_probe(backend)
        self._know(backend)
        now = self.clock()
        args = (now, self.probe_lease_s)
        try:
            try:
                reply = await client.evalsha(self._shas["breaker_probe"], 1, self.keys.breaker(backend), *args)
            except (NoScriptError, KeyError):
                await self._load_scripts(client)
                reply = await client.evalsha(self._shas["breaker_probe"], 1, self.keys.breaker(backend), *args)
        except REDIS_ERRORS as err:
            self._mark_down(err)
            return await self.local_breakers.acquire_probe(backend)
        self._mirror_breakers[backend] = breaker_from_reply(reply[1:])
        self._breaker_epoch[backend] = self._breaker_epoch.get(backend, 0) + 1
        await self.local_breakers.acquire_probe(backend)  # keeps the fallback state in step
        return bool(int(reply[0]))
