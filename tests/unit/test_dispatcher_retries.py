"""`Dispatcher` beyond one pass: retries and backoff, 429s, circuit breakers, concurrency limits,
statistics per attempt and per-request policies."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.backend import BackendUnavailable
from gateway.config import BreakerConfig, RoutingConfig, StatsConfig
from gateway.routing.dispatcher import Dispatcher
from gateway.routing.health import HealthState
from gateway.routing.interfaces import RequestFeatures
from gateway.routing.shared import LocalRoutingState
from plugins.openai_compat.errors import http_error

from .fakes import chat_completion_json, make_backend
from .test_dispatcher import BODY, NoSleep, call, dispatcher, gateway_error, health, open_stream, route, sleeps

__all__ = ["dispatcher", "health", "sleeps"]  # fixtures, used by name


# -- retries, breakers, limits ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def timed_dispatcher(clock: Clock, sleeps: NoSleep, **breaker: Any) -> Dispatcher:
    routing = LocalRoutingState(RoutingConfig(breaker=BreakerConfig(**breaker)), clock=clock)
    return Dispatcher(HealthState(), routing, StatsConfig(), sleep=sleeps, clock=clock)


async def test_retries_go_round_again_after_a_jittered_backoff(dispatcher: Dispatcher, sleeps: NoSleep) -> None:
    a, b = make_backend("a"), make_backend("b")
    outcomes: list[Any] = [http_error("a", 503, b"warming up"), chat_completion_json("second try")]
    a.reply = lambda: outcomes.pop(0)
    b.reply = http_error("b", 503, b"busy")
    served = await dispatcher.call(route(a, b, attempts=3), "chat", RequestFeatures("chat", BODY))
    assert served.backend is a and served.body == chat_completion_json("second try")
    assert [len(a.calls), len(b.calls)] == [2, 1]
    # One wait, before going round again: full jitter under the first backoff step (50 ms).
    assert len(sleeps.waits) == 1 and 0 <= sleeps.waits[0] <= 0.05
    assert "fallback after a, b failed" in served.reason


async def test_attempts_cap_every_try_fallbacks_included(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    a.reply = http_error("a", 503, b"busy")
    b.reply = http_error("b", 503, b"busy")
    err = await gateway_error(call(dispatcher, route(a, b, attempts=5), "chat", BODY))
    assert err.status == 503
    # Three soft failures open a breaker (the default): a twice, b twice, then a's third opens it.
    assert len(a.calls) + len(b.calls) == 5


async def test_a_429_is_not_retried_before_its_retry_after(dispatcher: Dispatcher, sleeps: NoSleep) -> None:
    a = make_backend("a")
    outcomes: list[Any] = [http_error("a", 429, b"slow down", retry_after="2"), chat_completion_json()]
    a.reply = lambda: outcomes.pop(0)
    r = route(a, attempts=2)
    r.config.retries.max_retry_after_s = 2.0
    backend, _ = await call(dispatcher, r, "chat", BODY)
    assert backend is a and len(a.calls) == 2
    assert sleeps.waits and max(sleeps.waits) >= 1.9  # it waited (about) what the server asked for
    assert dispatcher.breakers.snapshot("a").failures == 0  # busy is not broken


async def test_a_retry_after_beyond_the_routes_patience_is_passed_to_the_client(
    dispatcher: Dispatcher, sleeps: NoSleep
) -> None:
    a = make_backend("a")
    a.reply = http_error("a", 429, b"slow down", retry_after="30")
    err = await gateway_error(call(dispatcher, route(a, attempts=3), "chat", BODY))
    assert err.status == 503 and err.headers["retry-after"] == "30"
    assert len(a.calls) == 1 and sleeps.waits == []


async def test_a_dead_backend_costs_one_attempt_per_breaker_window() -> None:
    clock, sleeps = Clock(), NoSleep()
    dispatcher = timed_dispatcher(clock, sleeps, open_s=5.0, max_open_s=5.0)
    a, b = make_backend("a"), make_backend("b")
    a.reply = BackendUnavailable("a", "connection refused")
    r = route(a, b)
    for _ in range(3):  # one window: 50 requests, one each 0.1 s
        for _ in range(50):
            backend, _ = await call(dispatcher, r, "chat", BODY)
            assert backend is b
            clock.now += 0.1
    assert len(a.calls) == 3  # the first failure, then one probe per 5 s window
    a.reply = chat_completion_json("back")
    clock.now += 5.0
    backend, _ = await call(dispatcher, r, "chat", BODY)
    assert backend is a and dispatcher.breakers.snapshot("a").state == "closed"


async def test_an_open_breaker_is_named_in_the_503_with_its_retry_after() -> None:
    clock = Clock()
    dispatcher = timed_dispatcher(clock, NoSleep(), open_s=4.0)
    a = make_backend("a")
    a.reply = BackendUnavailable("a", "connection refused")
    await gateway_error(call(dispatcher, route(a), "chat", BODY))
    clock.now += 1.5
    err = await gateway_error(call(dispatcher, route(a), "chat", BODY))
    assert err.status == 503 and "a: circuit open for 2.5s more" in err.message
    assert err.headers["retry-after"] == "3"
    assert len(a.calls) == 1


async def test_a_backend_at_its_concurrency_limit_is_skipped(dispatcher: Dispatcher) -> None:
    a = make_backend("a")
    a.config.max_concurrency = 1
    b = make_backend("b")
    held = await open_stream(dispatcher, route(a, b), "chat", {**BODY, "stream": True})
    assert held.backend is a
    second = await open_stream(dispatcher, route(a, b), "chat", {**BODY, "stream": True})
    assert second.backend is b
    held.finish(ok=True, output_tokens=2)
    third = await open_stream(dispatcher, route(a, b), "chat", {**BODY, "stream": True})
    assert third.backend is a
    err = await gateway_error(open_stream(dispatcher, route(a), "chat", {**BODY, "stream": True}))
    assert err.status == 503 and "a: at its concurrency limit (1)" in err.message


async def test_statistics_follow_each_attempt(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    a.reply = http_error("a", 503, b"busy")
    await call(dispatcher, route(a, b), "chat", BODY)
    stats_a, stats_b = dispatcher.stats.get("a"), dispatcher.stats.get("b")
    assert (stats_a.in_flight, stats_a.error_rate) == (0, 1.0)
    assert (stats_b.in_flight, stats_b.error_rate) == (0, 0.0) and stats_b.samples == pytest.approx(1.0, rel=1e-3)
    result = await open_stream(dispatcher, route(b), "chat", {**BODY, "stream": True})
    assert dispatcher.stats.get("b").in_flight == 1
    result.finish(ok=None)  # the client hung up: no sample, in-flight back down
    assert dispatcher.stats.get("b").in_flight == 0
    assert dispatcher.stats.get("b").samples == pytest.approx(1.0, rel=1e-3)


async def test_a_4xx_is_no_sample_and_no_breaker_failure(dispatcher: Dispatcher) -> None:
    a = make_backend("a")
    a.reply = http_error("a", 400, b'{"error":{"message":"bad"}}')
    await gateway_error(call(dispatcher, route(a), "chat", BODY))
    assert dispatcher.stats.get("a").samples == 0 and dispatcher.breakers.snapshot("a").failures == 0


async def test_a_per_request_policy_is_cached_per_route(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    r = route(a, b)
    policy = dispatcher.policy_for(r, "round_robin")
    assert policy.name == "round_robin" and dispatcher.policy_for(r, "round_robin") is policy
    assert dispatcher.policy_for(r, None) is r.policy
    served = [(await dispatcher.call(r, "chat", RequestFeatures("chat", BODY), policy=policy)).backend.name
              for _ in range(4)]
    assert sorted(served) == ["a", "a", "b", "b"]


async def test_a_throttled_backend_waits_while_the_others_serve(dispatcher: Dispatcher, sleeps: NoSleep) -> None:
    a, b = make_backend("a"), make_backend("b")
    a.reply = http_error("a", 429, b"slow down", retry_after="2")
    await call(dispatcher, route(a, b), "chat", BODY)  # a asked for 2 s
    a.reply = chat_completion_json()
    backend, _ = await call(dispatcher, route(a, b), "chat", BODY)
    assert backend is b and len(a.calls) == 1 and sleeps.waits == []  # no one waited for a
    b.reply = http_error("b", 503, b"busy")
    backend, _ = await call(dispatcher, route(a, b, attempts=2), "chat", BODY)
    assert backend is a and len(a.calls) == 2  # b failed: then a, after its wait
    assert sleeps.waits and sleeps.waits[-1] >= 1.9
