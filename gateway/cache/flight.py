"""Single-flight in one process: identical cacheable requests in flight together make one backend call.

The first request for a cache digest leads a `Flight`: it calls the backend and publishes each SSE
event's payload as it arrives, then completes the flight with the whole answer (or fails it). Every
identical request that arrives meanwhile follows the flight instead: it receives every payload from
the first, streamed along with the leader, and the entry at the end. Across replicas the same is done
through Redis by `gateway.cache.remote_flight`, which copies a remote leader into a local `Flight`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from gateway.cache.entry import CacheEntry

__all__ = ["Flight", "FlightFailed", "FlightTable", "FlightTimeout"]


class FlightFailed(Exception):
    """The leader could not produce a complete answer; the follower must get one itself."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FlightTimeout(FlightFailed):
    """Nothing new (a payload or the end) arrived within the follower's idle timeout."""


class Flight:
    """One cacheable request being answered; identical requests follow it instead of calling a backend.

    Payloads are kept for the flight's lifetime so that a follower joining late still receives the
    answer from its first event. Waiting followers share one `asyncio.Event`, replaced after every
    change, so a publish costs one list append and (only when someone waits) one wake-up.
    """

    __slots__ = ("_changed", "_failure", "_followers", "_payloads", "digest", "entry", "from_store")

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.entry: CacheEntry | None = None
        # True when the leader found the answer stored: its followers got a cache hit, not a coalesced call.
        self.from_store = False
        self._payloads: list[bytes] = []
        self._failure: str | None = None
        self._followers = 0
        # Created by the first follower that has to wait, set and dropped by the next change:
        # a flight nobody waits on never allocates one.
        self._changed: asyncio.Event | None = None

    def __repr__(self) -> str:
        state = "completed" if self.entry is not None else "failed" if self._failure is not None else "in flight"
        return f"<Flight {self.digest[:12]} {state}, {len(self._payloads)} payloads, {self._followers} followers>"

    @property
    def done(self) -> bool:
        """Completed or failed: nothing more will be published."""
        return self.entry is not None or self._failure is not None

    @property
    def failure(self) -> str | None:
        """Why the flight failed, or None."""
        return self._failure

    @property
    def followers(self) -> int:
        """Followers iterating or waiting right now."""
        return self._followers

    @property
    def published(self) -> int:
        """Payloads published so far."""
        return len(self._payloads)

    def publish(self, payload: bytes) -> None:
        """Leader: one SSE event's data payload; wakes the followers. Ignored once the flight is done."""
        if self.done:
            return
        self._payloads.append(payload)
        self._wake()

    def complete(self, entry: CacheEntry) -> None:
        """Leader: the answer is complete (whether or not it gets stored). Ignored once done."""
        if self.done:
            return
        self.entry = entry
        self._wake()

    def fail(self, reason: str) -> None:
        """Leader: there will be no complete answer. Idempotent; a no-op after `complete`."""
        if self.done:
            return
        self._failure = reason
        self._wake()

    async def follow(self, idle_timeout_s: float) -> AsyncIterator[bytes]:
        """Every payload from the very first, in order, then return once complete (`entry` is set).

        Raises `FlightFailed` if the leader failed (after the payloads it did publish), and
        `FlightTimeout` if nothing new arrives within `idle_timeout_s`.
        """
        self._followers += 1
        try:
            sent = 0
            while True:
                # Indexing, not iterating: the leader may append while this follower's consumer runs.
                while sent < len(self._payloads):
                    payload = self._payloads[sent]
                    sent += 1
                    yield payload
                if self.entry is not None:
                    return
                if self._failure is not None:
                    raise FlightFailed(self._failure)
                await self._next_change(idle_timeout_s)
        finally:
            self._followers -= 1

    async def wait(self, idle_timeout_s: float) -> CacheEntry:
        """The complete entry, without the payloads; raises as `follow` does. A payload counts as
        news: the timeout is on silence, not on the whole answer."""
        self._followers += 1
        try:
            while True:
                if self.entry is not None:
                    return self.entry
                if self._failure is not None:
                    raise FlightFailed(self._failure)
                await self._next_change(idle_timeout_s)
        finally:
            self._followers -= 1

    async def _next_change(self, idle_timeout_s: float) -> None:
        changed = self._changed
        if changed is None:
            changed = self._changed = asyncio.Event()
        try:
            async with asyncio.timeout(idle_timeout_s):
                await changed.wait()
        except TimeoutError:
            raise FlightTimeout(f"nothing from the leader within {idle_timeout_s:g} s") from None

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()


class FlightTable:
    """The flights in this process, by cache digest."""

    __slots__ = ("_flights",)

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, digest: str) -> Flight | None:
        """The flight for `digest` in the table, if any (for inspection; requests use `join`)."""
        return self._flights.get(digest)

    def join(self, digest: str) -> tuple[Flight, bool]:
        """The flight for `digest`, and True when the caller is its leader and must `land` it.

        A completed flight still in the table is joined (its follower gets the answer at once); a
        failed one is replaced by a new flight, so a failure does not spread to later requests.
        """
        flight = self._flights.get(digest)
        if flight is not None and flight.failure is None:
            return flight, False
        flight = self._flights[digest] = Flight(digest)
        return flight, True

    def land(self, flight: Flight) -> None:
        """Leader, in a `finally`: remove the flight (only if it is still the table's flight for its
        digest) and, if it is not done yet, fail it so its followers stop waiting."""
        if self._flights.get(flight.digest) is flight:
            del self._flights[flight.digest]
        flight.fail("leader went away")
