"""This replica's lead of one flight shared through Redis (see `gateway.cache.remote_flight`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from gateway.cache.entry import CacheEntry, encode_entry

if TYPE_CHECKING:
    from gateway.cache.remote_flight import RemoteFlights

__all__ = ["END", "FAIL", "PAYLOAD", "START", "RemoteLead"]

log = logging.getLogger("gateway.cache")

# Message types in the flight stream (field `t`).
START, PAYLOAD, END, FAIL = b"s", b"p", b"e", b"f"
# Payloads per write script: one round trip each, short enough never to hold Redis for long.
_WRITE_BATCH = 256


class RemoteLead:
    """This replica's lead of one flight; `shared` False for a no-op lead (Redis unusable, go alone).

    Payloads are queued, and written only once `share()` is called (a follower on another replica
    asked for them): then a background task writes the queue from the first payload on, in batches
    (one script call each, order kept). A lead that lives past a third of the lock's TTL gets the same
    task to keep its lock alive. Writing failures are booked on the store's guard and end the sharing
    (followers go to their backends); they never reach the request.
    """

    def __init__(self, flights: RemoteFlights | None, digest: str, token: str) -> None:
        self.shared = flights is not None
        self.digest = digest
        self._flights = flights
        self._token = token
        self._pending: list[bytes] = []
        self._sharing = False
        self._wake = asyncio.Event()
        self._closing = False
        self._finished = not self.shared
        self._broken = False
        self._task: asyncio.Task[None] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        if flights is not None:
            # Most answers end well within the lock's TTL: a timer, not a task, until one does not.
            loop = asyncio.get_running_loop()
            self._keepalive = loop.call_later(flights.lock_ttl_s / 3, self._start)

    @property
    def sharing(self) -> bool:
        """Whether payloads are being written for followers on other replicas."""
        return self._sharing

    def share(self) -> None:
        """A follower on another replica wants the payloads: write them all, and every one after."""
        if self._sharing or self._finished:
            return
        self._sharing = True
        self._start()
        self._wake.set()

    def publish(self, payload: bytes) -> None:
        """Queue one payload for the followers; never blocks, never raises."""
        if self._closing or self._broken:
            return
        self._pending.append(payload)
        if self._sharing:
            self._wake.set()

    async def complete(self, entry: CacheEntry, store: tuple[str, float] | None = None) -> bool:
        """Flush, append the end message carrying the entry (and with `store`, an (entry key, ttl_s),
        store it in the cache in the same call), release the lock; whether it was written. Never raises."""
        return await self._finish(END, encode_entry(entry), store)

    async def abort(self, reason: str) -> None:
        """Flush, append a fail message, release the lock. Never raises."""
        await self._finish(FAIL, reason.encode(), None)

    def _start(self) -> None:
        if self._task is None and not self._finished and self._flights is not None:
            self._task = asyncio.create_task(self._run(self._flights), name=f"flight-lead-{self.digest[:12]}")

    def _forget(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._flights is not None and self._flights._leads.get(self.digest) is self:
            del self._flights._leads[self.digest]

    def _halt(self) -> None:
        """Stop every background write without a word to Redis: what a crashed leader looks like."""
        self._finished = self._closing = True
        if self._task is not None:
            self._task.cancel()
        self._forget()

    async def _finish(self, kind: bytes, data: bytes, store: tuple[str, float] | None) -> bool:
        if self._finished or self._flights is None:
            return False
        self._finished = self._closing = True
        flights = self._flights
        if not self._sharing:
            self._pending.clear()  # nobody asked: the end message alone carries the answer
        self._wake.set()
        try:
            if self._task is not None:
                await self._task  # drains what is queued, so the end comes after every payload
            if self._broken:
                return False
            if await flights._write(self.digest, self._token, [(kind, data)], final=True, store=store):
                return True
            flights.lost_leads += 1
        except Exception:
            log.exception("response cache: ending the flight for %s failed", self.digest)
        finally:
            self._forget()
        return False

    async def _run(self, flights: RemoteFlights) -> None:
        interval = flights.lock_ttl_s / 3
        refreshed = flights.clock()
        try:
            while True:
                writable = self._pending if self._sharing else []
                if not writable and not self._closing:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, refreshed + interval - flights.clock())):
                            await self._wake.wait()
                    writable = self._pending if self._sharing else []
                if writable:
                    batch = writable[:_WRITE_BATCH]
                    del writable[:_WRITE_BATCH]
                    ok = await flights._write(self.digest, self._token, [(PAYLOAD, payload) for payload in batch])
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
            await flights._write(self.digest, self._token, [(FAIL, b"leader lost its flight stream")], final=True)
