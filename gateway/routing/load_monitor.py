"""Reads each backend's own load signal (queue depth, running requests, KV use) on an interval.

Policies weigh a request's predicted time by the work queued in the engine itself, which the
gateway's own in-flight count cannot see when other clients (or other gateways without a
shared store) use the same server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from gateway.backend import Backend, BackendLoad
from gateway.routing.interfaces import RoutingStats
from gateway.routing.periodic import PeriodicTask

log = logging.getLogger("gateway.load")


def others_load(load: BackendLoad, ours: int) -> BackendLoad:
    """The engine's counts less this gateway's `ours` requests in flight, which it counts too.

    Without this, a request of ours would weigh twice until the next poll (our in-flight count
    and the engine's running count), long after it finished. Ours are taken from the running
    requests first (the engine serves the gateway's as soon as it can), then from the queue.
    """
    running, waiting = load.running, load.waiting
    if running is not None:
        taken = min(running, ours)
        running, ours = running - taken, int(ours - taken)
    if waiting is not None:
        waiting = max(0.0, waiting - ours)
    return BackendLoad(running=running, waiting=waiting, kv_cache_usage=load.kv_cache_usage,
                       capacity=load.capacity)


class LoadMonitor:
    """Polls `backend.load()` for every backend and hands the answers to the statistics."""

    def __init__(
        self,
        backends: Sequence[Backend],
        stats: RoutingStats,
        interval_s: float,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._backends = backends
        self._stats = stats
        self._interval_s = interval_s
        self._periodic = PeriodicTask("load-monitor", self.poll_once, interval_s, sleep)
        self._failing: set[str] = set()

    async def poll_once(self) -> None:
        """Read every backend's load concurrently; a failed read keeps the last known load."""
        before = [self._stats.get(b.name).in_flight for b in self._backends]
        results = await asyncio.gather(*(b.load() for b in self._backends), return_exceptions=True)
        for backend, result, ours_before in zip(self._backends, results, before, strict=True):
            if isinstance(result, BaseException):
                if backend.name not in self._failing:  # once per outage, not once per poll
                    self._failing.add(backend.name)
                    log.info("backend %s: load signal unavailable (%s)", backend.name, result)
                continue
            self._failing.discard(backend.name)
            ours = max(ours_before, self._stats.get(backend.name).in_flight)
            self._stats.observe_load(backend.name, others_load(result, ours))

    def start(self) -> None:
        if self._interval_s > 0:
            self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
