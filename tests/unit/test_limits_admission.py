"""Per-backend concurrency with a bounded wait queue (issue 8, item 2): FIFO hand-over of freed
slots, a bounded queue, a wait that runs out, cancellation while queued, and load shedding as a 503
`overloaded` with Retry-After. Streams hold their slot until `finish`, so the tests decide exactly
when a slot comes free; nothing here depends on timing but the one wait that must run out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.routing.admission import AdmissionMetrics, BackendSlots
from gateway.routing.dispatcher import Dispatcher, StreamResult
from gateway.routing.interfaces import RequestFeatures
from gateway.routing.stats import LocalStats
from gateway.routing.table import Route

from .fakes import FakeBackend, make_backend
from .test_dispatcher import BODY, dispatcher, gateway_error, health, route, sleeps

__all__ = ["dispatcher", "health", "sleeps"]  # fixtures, used by name

STREAM = {**BODY, "stream": True}


def limited(name: str, *, limit: int = 1, queue: int = 2, timeout_s: float = 30.0) -> FakeBackend:
    backend = make_backend(name)
    backend.config.max_concurrency, backend.config.max_queue, backend.config.queue_timeout_s = limit, queue, timeout_s
    return backend


def opening(dispatcher: Dispatcher, r: Route) -> asyncio.Task[StreamResult]:
    return asyncio.create_task(dispatcher.open_stream(r, "chat", RequestFeatures("chat", STREAM)))


async def settle() -> None:
    """Let every task that can run, run (a handful of loop turns)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_queued_requests_get_freed_slots_in_arrival_order(dispatcher: Dispatcher) -> None:
    a = limited("a", queue=3)
    r = route(a)
    held = await dispatcher.open_stream(r, "chat", RequestFeatures("chat", STREAM))
    waiting = []
    for _ in range(3):
        waiting.append(opening(dispatcher, r))
        await settle()
    assert dispatcher.slots.depth("a") == 3 and not any(t.done() for t in waiting)
    assert len(a.calls) == 1  # nobody waiting reached the backend
    held.finish(ok=True)
    await settle()
    assert [t.done() for t in waiting] == [True, False, False]  # the first in line, nobody else
    assert dispatcher.slots.active["a"] == 1 and dispatcher.slots.depth("a") == 2
    for i in range(3):
        (await waiting[i]).finish(ok=True)
        await settle()
        assert sum(t.done() for t in waiting) == min(3, i + 2)
    assert dispatcher.slots.active["a"] == 0 and dispatcher.slots.depth("a") == 0
    assert len(a.calls) == 4


async def test_a_freed_slot_goes_to_the_queue_before_any_newcomer(dispatcher: Dispatcher) -> None:
    a = limited("a", queue=1)
    r = route(a)
    held = await dispatcher.open_stream(r, "chat", RequestFeatures("chat", STREAM))
    queued = opening(dispatcher, r)
    await settle()
    held.finish(ok=True)
    newcomer = opening(dispatcher, r)  # arrives in the same instant the slot is freed
    await settle()
    assert queued.done() and not newcomer.done()
    (await queued).finish(ok=True)
    (await newcomer).finish(ok=True)


async def test_a_full_queue_sheds_at_once_with_overloaded_and_retry_after(dispatcher: Dispatcher) -> None:
    registry = CollectorRegistry()
    AdmissionMetrics.watch(registry, dispatcher.slots)
    a = limited("a", queue=1)
    r = route(a)
    held = await dispatcher.open_stream(r, "chat", RequestFeatures("chat", STREAM))
    queued = opening(dispatcher, r)
    await settle()
    assert registry.get_sample_value("gateway_backend_queue_depth", {"backend": "a"}) == 1
    err = await gateway_error(dispatcher.open_stream(r, "chat", RequestFeatures("chat", STREAM)))
    assert err.status == 503 and err.code == "overloaded"
    assert "'a' (1 running, 1 waiting)" in err.message and err.headers["retry-after"] == "1"
    assert registry.get_sample_value("gateway_backend_shed_total", {"backend": "a"}) == 1
    held.finish(ok=True)
    (await queued).finish(ok=True)


async def test_retry_after_comes_from_the_backends_recent_latency(dispatcher: Dispatcher) -> None:
    a = limited("a", limit=2, queue=0)
    slots = dispatcher.slots
    for _ in range(5):
        dispatcher.stats.started("a")
        dispatcher.stats.finished("a", ok=True, e2e_s=3.0, ttft_s=None, output_tokens=None)
    # Nobody ahead, two slots, three seconds a request: a place in about 1.5 s.
    assert slots.retry_after([a], dispatcher.stats) == 2
    assert slots.retry_after([make_backend("fresh")], dispatcher.stats) == 1  # no samples yet


async def test_a_wait_that_runs_out_is_shed(dispatcher: Dispatcher) -> None:
    a = limited("a", queue=1, timeout_s=0.01)
    r = route(a)
    held = await dispatcher.open_stream(r, "chat", RequestFeatures("chat", STREAM))
    err = await gateway_error(dispatcher.open_stream(r, "chat", RequestFeatures("chat", STREAM)))
    assert err.status == 503 and err.code == "overloaded" and "no slot came free on 'a' within 0.01s" in err.message
    assert err.headers["retry-after"] == "1" and dispatcher.slots.depth("a") == 0
    held.finish(ok=True)
    assert dispatcher.slots.active["a"] == 0  # the timed-out request holds nothing


async def test_a_request_cancelled_while_queued_frees_its_place(dispatcher: Dispatcher) -> None:
    a = limited("a", queue=1)
    r = route(a)
    held = await dispatcher.open_stream(r, "chat", RequestFeatures("chat", STREAM))
    gone = opening(dispatcher, r)
    await settle()
    gone.cancel()  # the client hung up
    await settle()
    assert gone.cancelled() and dispatcher.slots.depth("a") == 0
    queued = opening(dispatcher, r)  # the place is free again
    await settle()
    assert dispatcher.slots.depth("a") == 1
    held.finish(ok=True)
    (await queued).finish(ok=True)
    assert dispatcher.slots.active["a"] == 0


async def test_a_slot_handed_to_a_request_cancelled_in_that_instant_goes_to_the_next() -> None:
    slots = BackendSlots()
    a = limited("a", queue=2)
    slots.active["a"] = 1
    stats = LocalStats()
    first = asyncio.create_task(slots.wait([a], stats))
    second = asyncio.create_task(slots.wait([a], stats))
    await settle()
    slots.release("a")  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it could run
    await settle()
    assert first.cancelled() and second.done() and second.result() is a
    assert slots.active["a"] == 1 and slots.depth("a") == 0


async def test_a_request_queued_on_two_backends_takes_the_first_free_slot(dispatcher: Dispatcher) -> None:
    a, b = limited("a"), limited("b")
    r = route(a, b)
    held_a = await dispatcher.open_stream(r, "chat", RequestFeatures("chat", STREAM))
    held_b = await dispatcher.open_stream(r, "chat", RequestFeatures("chat", STREAM))
    assert (held_a.backend, held_b.backend) == (a, b)
    queued = opening(dispatcher, r)
    await settle()
    assert dispatcher.slots.depth("a") == dispatcher.slots.depth("b") == 1
    held_b.finish(ok=True)
    result = await queued
    assert result.backend is b and dispatcher.slots.depth("a") == 0  # it left a's queue too
    result.finish(ok=True)
    held_a.finish(ok=True)
    assert dispatcher.slots.active == {"a": 0, "b": 0}


async def test_without_a_queue_a_full_backend_is_skipped_as_before(dispatcher: Dispatcher) -> None:
    a = limited("a", queue=0)
    held = await dispatcher.open_stream(route(a), "chat", RequestFeatures("chat", STREAM))
    err = await gateway_error(dispatcher.open_stream(route(a), "chat", RequestFeatures("chat", STREAM)))
    assert err.status == 503 and "a: at its concurrency limit (1)" in err.message
    held.finish(ok=True)


@pytest.mark.parametrize("status", [500, 400])
async def test_a_queued_request_whose_attempt_fails_passes_the_slot_on(dispatcher: Dispatcher, status: int) -> None:
    from plugins.openai_compat.errors import http_error

    a = limited("a", queue=2)
    r = route(a)
    held = await dispatcher.open_stream(r, "chat", RequestFeatures("chat", STREAM))
    failing = opening(dispatcher, r)
    await settle()
    after = opening(dispatcher, r)
    await settle()
    default, failures = a.stream_factory, [http_error("a", status, b"no")]

    def fail_once() -> Any:
        if failures:
            raise failures.pop()
        return default()  # type: ignore[operator]

    a.stream_factory = fail_once
    held.finish(ok=True)
    await settle()
    assert failing.done() and isinstance(failing.exception(), Exception)
    result = await after
    result.finish(ok=True)
    assert dispatcher.slots.active["a"] == 0
