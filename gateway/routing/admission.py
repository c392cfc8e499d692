"""Per-backend concurrency: a slot count and a bounded FIFO wait queue per backend, and load shedding.

A backend with `max_concurrency` takes that many requests at once from this gateway process. When
every candidate of a request is at its limit, the request waits in the queues of those that have
room (`max_queue` places each), for up to `queue_timeout_s`, and takes the first slot any of them
frees. A freed slot is handed straight to the longest-waiting request (FIFO), so a newcomer can never
take it first. When every queue is full, or the wait runs out, the request is shed: a 503 `overloaded`
with a Retry-After estimated from how fast the backend has been finishing requests. A request
cancelled while it waits (the client hung up) leaves its place at once, and a slot it was handed in
that instant goes on to the next in line.

Concurrency is counted per gateway process: N replicas send a backend up to N x max_concurrency
requests. Size `max_concurrency` per replica, or leave the backend's own queue to its engine.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.backend import Backend
from gateway.errors import GatewayError
from gateway.routing.interfaces import RoutingStats


def overloaded(reason: str, retry_after_s: int) -> GatewayError:
    """503: the request was shed (queues full, or no slot came in time)."""
    return GatewayError(503, f"the gateway is overloaded: {reason}", type="api_error", code="overloaded",
                        headers={"retry-after": str(retry_after_s)})


class _Waiter:
    """One queued request: a future that gets the name of the backend whose slot it was handed
    (None when its wait ran out), and the queues it stands in."""

    __slots__ = ("future", "names")

    def __init__(self, future: asyncio.Future[str | None], names: list[str]) -> None:
        self.future = future
        self.names = names

    def grant(self, name: str, queues: dict[str, deque[_Waiter]]) -> bool:
        """Hand it `name`'s slot; False when it is no longer waiting (cancelled, expired)."""
        if self.future.done():
            return False
        self.future.set_result(name)
        self.withdraw(queues)
        return True

    def expire(self, queues: dict[str, deque[_Waiter]]) -> None:
        if not self.future.done():
            self.future.set_result(None)
        self.withdraw(queues)

    def withdraw(self, queues: dict[str, deque[_Waiter]]) -> None:
        for name in self.names:
            queue = queues.get(name)
            if queue is not None and self in queue:
                queue.remove(self)  # O(max_queue), and only when a request leaves a queue
        self.names = []


class BackendSlots:
    """Requests open per backend (this process) and the requests waiting for a slot."""

    def __init__(self) -> None:
        self.active: dict[str, int] = {}
        self._queues: dict[str, deque[_Waiter]] = {}
        self.on_shed: Callable[[str], None] | None = None

    def depth(self, name: str) -> int:
        """Requests waiting for a slot on `name`."""
        queue = self._queues.get(name)
        return len(queue) if queue is not None else 0

    def depths(self) -> dict[str, int]:
        return {name: len(queue) for name, queue in self._queues.items()}

    def release(self, name: str) -> None:
        """A request on `name` is over: its slot passes to the longest-waiting request, else is freed."""
        queue = self._queues.get(name)
        while queue:
            if queue.popleft().grant(name, self._queues):
                return  # the count stays: the slot changed hands
        self.active[name] = max(0, self.active.get(name, 0) - 1)

    def kick(self, name: str, limit: int) -> None:
        """Hand `name`'s free slot, if it has one, to a waiting request (after a request that was handed
        a slot went elsewhere instead)."""
        if self.active.get(name, 0) < limit and self._queues.get(name):
            self.active[name] = self.active.get(name, 0) + 1
            self.release(name)

    def shed(self, backends: Sequence[Backend]) -> None:
        """Count a request turned away by `backends` (all at their limit)."""
        if self.on_shed is not None:
            for backend in backends:
                self.on_shed(backend.name)

    def retry_after(self, backends: Sequence[Backend], stats: RoutingStats) -> int:
        """Seconds until a place is likely free: the queue ahead (and this request) served at the backend's
        concurrency, at its recent time per request; the soonest of `backends`, else 1."""
        waits = []
        for backend in backends:
            e2e = stats.get(backend.name).e2e_s
            limit = backend.config.max_concurrency or 1
            if e2e is not None:
                waits.append((self.depth(backend.name) + 1) / limit * e2e)
        return max(1, math.ceil(min(waits))) if waits else 1

    async def wait(self, full: Sequence[Backend], stats: RoutingStats) -> Backend:
        """A slot on one of `full` (backends at their limit), waited for in their queues; 503 when every
        queue is full or no slot comes in time. The slot is counted in `active` for the caller."""
        roomy = [b for b in full if b.config.max_queue > self.depth(b.name)]
        if not roomy:
            self.shed(full)
            listing = ", ".join(f"'{b.name}' ({self.active.get(b.name, 0)} running, {self.depth(b.name)} waiting)"
                                for b in full)
            raise overloaded(f"every backend that can serve it is at its concurrency limit with a full queue: "
                             f"{listing}", self.retry_after(full, stats))
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), [b.name for b in roomy])
        for backend in roomy:
            self._queues.setdefault(backend.name, deque()).append(waiter)
        timeout = max(b.config.queue_timeout_s for b in roomy)
        timer = loop.call_later(timeout, waiter.expire, self._queues)
        try:
            name = await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            handed = future.result() if future.done() and not future.cancelled() else None
            if handed is not None:
                self.release(handed)  # handed a slot just as the request went away: pass it on
            raise
        finally:
            timer.cancel()
            waiter.withdraw(self._queues)
        if name is None:
            self.shed(roomy)
            names = ", ".join(f"'{b.name}'" for b in roomy)
            raise overloaded(f"no slot came free on {names} within {timeout:g}s (concurrency limit reached)",
                             self.retry_after(roomy, stats))
        return next(b for b in roomy if b.name == name)


class AdmissionMetrics(Collector):
    """`gateway_backend_shed_total{backend}` (requests turned away by a full backend: queue full or
    waited too long) and `gateway_backend_queue_depth{backend}` (requests waiting for a slot now).

    One per registry: the counts outlive the dispatcher they come from (a config reload builds a new
    one), and the depth is read at scrape time from the newest."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, AdmissionMetrics] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self.shed: dict[str, int] = {}
        self.slots: BackendSlots | None = None

    @classmethod
    def watch(cls, registry: CollectorRegistry, slots: BackendSlots) -> AdmissionMetrics:
        """Count `slots`' shed requests and export its queue depths, on `registry`."""
        metrics = cls._by_registry.get(registry)
        if metrics is None:
            metrics = cls._by_registry[registry] = cls()
            registry.register(metrics)
        metrics.slots = slots
        slots.on_shed = metrics.count
        return metrics

    def count(self, backend: str) -> None:
        self.shed[backend] = self.shed.get(backend, 0) + 1

    def collect(self) -> Iterator[Metric]:
        shed = CounterMetricFamily("gateway_backend_shed", "Requests turned away because the backend was at its "
                                   "concurrency limit with a full wait queue, or no slot came in time",
                                   labels=["backend"])
        for backend, count in sorted(self.shed.items()):
            shed.add_metric([backend], count)
        yield shed
        depth = GaugeMetricFamily("gateway_backend_queue_depth", "Requests waiting for a concurrency slot on the "
                                  "backend (this process)", labels=["backend"])
        if self.slots is not None:
            for backend, waiting in sorted(self.slots.depths().items()):
                depth.add_metric([backend], waiting)
        yield depth
