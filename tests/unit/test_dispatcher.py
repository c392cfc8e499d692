"""`Dispatcher`: fallback on `BackendUnavailable`, 502/503 listings, 422 for parameters, stream start."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.backend import BackendContext, BackendUnavailable
from gateway.config import BackendConfig, RetryConfig, RouteConfig, RoutingConfig, StatsConfig
from gateway.errors import GatewayError, backend_failed, backend_timeout, unsupported_parameter
from gateway.routing.dispatcher import Dispatcher, StreamResult
from gateway.routing.health import HealthState
from gateway.routing.interfaces import RequestFeatures
from gateway.routing.policies import FirstHealthyPolicy
from gateway.routing.shared import LocalRoutingState
from gateway.routing.table import Route
from plugins.llamacpp.backend import LlamaCppBackend
from plugins.openai_compat.errors import http_error

from .fakes import DONE, FakeBackend, FakeUpstream, ScriptedStream, chat_completion_json, chunk_event, make_backend

BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def route(*backends: Any, attempts: int | None = None) -> Route:
    """A first-healthy route; one try per backend unless `attempts` says otherwise."""
    retries = RetryConfig(attempts=attempts or len(backends))
    config = RouteConfig(model="m", backends=[b.name for b in backends], retries=retries)
    return Route(model="m", backends=tuple(backends), policy=FirstHealthyPolicy(), config=config)


async def call(dispatcher: Dispatcher, route: Route, kind: Any, body: dict[str, Any]) -> tuple[Any, bytes]:
    served = await dispatcher.call(route, kind, RequestFeatures(kind, body))
    return served.backend, served.body


async def open_stream(dispatcher: Dispatcher, route: Route, kind: Any, body: dict[str, Any]) -> StreamResult:
    return await dispatcher.open_stream(route, kind, RequestFeatures(kind, body))


def llamacpp(name: str = "llama") -> LlamaCppBackend:
    config = BackendConfig(name=name, plugin="llamacpp", model="m", url="http://127.0.0.1:9")
    return LlamaCppBackend(config, BackendContext(upstream=FakeUpstream()))


async def gateway_error(awaitable: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await awaitable
    return info.value


@pytest.fixture
def health() -> HealthState:
    return HealthState()


class NoSleep:
    """Records backoff waits instead of sleeping them."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> NoSleep:
    return NoSleep()


@pytest.fixture
def dispatcher(health: HealthState, sleeps: NoSleep) -> Dispatcher:
    return Dispatcher(health, LocalRoutingState(RoutingConfig()), StatsConfig(), sleep=sleeps)


# -- non-streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "method"), [("chat", "chat"), ("completion", "completion"),
                                              ("embedding", "embeddings")])
async def test_first_backend_serves_and_the_next_is_not_called(dispatcher: Dispatcher, kind: str, method: str) -> None:
    a, b = make_backend("a"), make_backend("b")
    a.reply = b'{"served_by":"a"}'
    body = {"model": "m", "input": "x"} if kind == "embedding" else {"model": "m", "prompt": "x"}
    if kind == "chat":
        body = BODY
    backend, payload = await call(dispatcher, route(a, b), kind, body)  # type: ignore[arg-type]
    assert (backend, payload) == (a, b'{"served_by":"a"}')
    assert a.calls == [(method, body)]
    assert b.calls == []


async def test_falls_back_on_a_refused_connection_and_opens_its_breaker(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    a.reply = BackendUnavailable("a", "connection refused")
    backend, payload = await call(dispatcher, route(a, b), "chat", BODY)
    assert backend is b and payload == chat_completion_json()
    assert len(a.calls) == 1
    assert dispatcher.breakers.snapshot("a").state == "open"
    # The next request skips the backend whose breaker is open.
    await call(dispatcher, route(a, b), "chat", BODY)
    assert len(a.calls) == 1 and len(b.calls) == 2


async def test_a_busy_backend_fails_softly(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    a.reply = BackendUnavailable("a", "HTTP 503: busy", mark_down=False)
    backend, _ = await call(dispatcher, route(a, b), "chat", BODY)
    assert backend is b
    snapshot = dispatcher.breakers.snapshot("a")
    assert (snapshot.state, snapshot.failures) == ("closed", 1)  # one failure of the three that open it


async def test_503_lists_every_backend_tried_and_skipped(dispatcher: Dispatcher, health: HealthState) -> None:
    a, b, c = make_backend("a"), make_backend("b"), make_backend("c")
    a.reply = BackendUnavailable("a", "connection refused")
    health.mark("b", False, "health check failed: timeout")
    c.reply = BackendUnavailable("c", "HTTP 429: slow down", mark_down=False)
    err = await gateway_error(call(dispatcher, route(a, b, c), "chat", BODY))
    assert (err.status, err.code, err.type) == (503, "no_healthy_backend", "api_error")
    assert err.headers.get("retry-after") == "1"
    for text in ("a: connection refused", "b: health check failed: timeout", "c: HTTP 429: slow down"):
        assert text in err.message
    assert b.calls == []


async def test_502_when_every_failure_was_a_server_error(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    a.reply = http_error("a", 500, b'{"error":{"message":"kaboom"}}')
    b.reply = http_error("b", 501, b"not implemented")
    err = await gateway_error(call(dispatcher, route(a, b), "chat", BODY))
    assert (err.status, err.code) == (502, "backend_error")
    assert "a: HTTP 500: kaboom" in err.message
    assert "b: HTTP 501: not implemented" in err.message


async def test_a_mix_of_failures_is_503(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    a.reply = http_error("a", 500, b"oops")
    b.reply = BackendUnavailable("b", "connection refused")
    err = await gateway_error(call(dispatcher, route(a, b), "chat", BODY))
    assert (err.status, err.code) == (503, "no_healthy_backend")


async def test_no_healthy_candidate_is_503_without_calling_anyone(dispatcher: Dispatcher, health: HealthState) -> None:
    a, b = make_backend("a"), make_backend("b")
    health.mark("a", False, "refused")
    health.mark("b", False)
    err = await gateway_error(call(dispatcher, route(a, b), "chat", BODY))
    assert err.status == 503
    assert "a: refused" in err.message and "b: health check failed" in err.message
    assert a.calls == b.calls == []


@pytest.mark.parametrize("status", [400, 401, 404, 413])
async def test_4xx_passes_through_untouched(dispatcher: Dispatcher, health: HealthState, status: int) -> None:
    a, b = make_backend("a"), make_backend("b")
    original = http_error("a", status, b'{"error":{"message":"context too long","param":"messages","code":"c1"}}')
    a.reply = original
    err = await gateway_error(call(dispatcher, route(a, b), "chat", BODY))
    assert err is original
    assert (err.status, err.param, err.code) == (status, "messages", "c1")
    assert b.calls == []
    assert health.is_healthy("a")


async def test_server_side_failures_fall_back_and_one_failure_keeps_its_own_error(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    a.reply = backend_failed("a", "truncated body")
    served_by, _ = await call(dispatcher, route(a, b), "chat", BODY)
    assert served_by is b and len(b.calls) == 1
    # Alone on its route, the failure is reported as itself, not wrapped in a listing.
    err = await gateway_error(call(dispatcher, route(a), "chat", BODY))
    assert err is a.reply and err.status == 502


async def test_504_when_every_backend_timed_out(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    a.reply, b.reply = backend_timeout("a", "the response", 1), backend_timeout("b", "the response", 1)
    err = await gateway_error(call(dispatcher, route(a, b), "chat", BODY))
    assert (err.status, err.code) == (504, "backend_timeout")
    assert "a: backend 'a' timed out" in err.message and "b: backend 'b' timed out" in err.message


# -- parameters ------------------------------------------------------------------------------------


def single_choice(kind: str, body: dict[str, Any]) -> None:
    """A server that generates one choice per request."""
    if body.get("n") not in (None, 1):
        raise unsupported_parameter("n", "single", "fake")


async def test_picks_a_backend_that_supports_n(dispatcher: Dispatcher) -> None:
    single, other = make_backend("single"), make_backend("other")
    single.param_check = single_choice
    backend, _ = await call(dispatcher, route(single, other), "chat", {**BODY, "n": 2})
    assert backend is other
    assert single.calls == []
    backend, _ = await call(dispatcher, route(single, other), "chat", {**BODY, "n": 1})
    assert backend is single


async def test_422_names_n_when_no_backend_supports_it(dispatcher: Dispatcher) -> None:
    single = make_backend("single")
    single.param_check = single_choice
    err = await gateway_error(call(dispatcher, route(single), "chat", {**BODY, "n": 2}))
    assert (err.status, err.param, err.code) == (422, "n", "unsupported_parameter")
    assert "single" in err.message
    assert single.calls == []


async def test_llamacpp_completion_best_of_goes_to_another_backend(dispatcher: Dispatcher) -> None:
    llama, other = llamacpp(), make_backend("other")
    body = {"model": "m", "prompt": "x", "best_of": 2}
    backend, _ = await call(dispatcher, route(llama, other), "completion", body)
    assert backend is other
    err = await gateway_error(call(dispatcher, route(llama), "completion", body))
    assert (err.status, err.param, err.code) == (422, "best_of", "unsupported_parameter")
    assert "llama" in err.message and "llamacpp" in err.message


async def test_422_names_an_unknown_parameter(dispatcher: Dispatcher) -> None:
    a = make_backend("a")
    err = await gateway_error(call(dispatcher, route(a), "chat", {**BODY, "foo": 1}))
    assert (err.status, err.param, err.code) == (422, "foo", "unsupported_parameter")
    assert a.calls == []


async def test_unknown_parameter_goes_to_the_backend_that_declares_it(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    b.params = {**b.params, "chat": b.params["chat"] | {"foo"}}
    backend, _ = await call(dispatcher, route(a, b), "chat", {**BODY, "foo": 1})
    assert backend is b


async def test_llamacpp_native_params_and_null_values_are_accepted(dispatcher: Dispatcher) -> None:
    llama = llamacpp()
    # Routed to llama.cpp (no other candidate): the fake upstream refuses, so it reports unavailable.
    err = await gateway_error(
        call(dispatcher, route(llama), "chat", {**BODY, "top_k": 40, "min_p": 0.1, "n": 2, "foo": None})
    )
    assert err.status == 503 and "llama: connection failed" in err.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("best_of", 3),
        ("suffix", "end"),
        ("echo", True),
    ],
)
async def test_llamacpp_refuses_completion_fields_it_cannot_honour(
    dispatcher: Dispatcher, field: str, value: Any
) -> None:
    body = {"model": "m", "prompt": "x", field: value}
    err = await gateway_error(call(dispatcher, route(llamacpp()), "completion", body))
    assert (err.status, err.param) == (422, field)


async def test_parameter_check_happens_before_any_call(dispatcher: Dispatcher) -> None:
    a = make_backend("a")

    def refuse(kind: str, body: dict[str, Any]) -> None:
        if body.get("temperature", 0) > 1:
            raise GatewayError(422, "too hot", param="temperature", code="unsupported_parameter")

    a.param_check = refuse
    err = await gateway_error(call(dispatcher, route(a), "chat", {**BODY, "temperature": 1.5}))
    assert (err.status, err.param) == (422, "temperature")
    assert a.calls == []


# -- streams ---------------------------------------------------------------------------------------


async def drain(result: Any) -> bytes:
    return result.first + b"".join([events async for events in result.rest])


async def test_stream_returns_the_first_events_and_the_rest(dispatcher: Dispatcher) -> None:
    a = make_backend("a")
    result = await open_stream(dispatcher, route(a), "chat", {**BODY, "stream": True})
    assert result.backend is a
    assert result.first == chunk_event("hel")
    assert await drain(result) == chunk_event("hel") + chunk_event("lo") + DONE
    assert result.stream is a.streams[0]
    assert a.calls[0][0] == "stream_chat"


async def test_completion_streams_use_stream_completion(dispatcher: Dispatcher) -> None:
    a = make_backend("a")
    await open_stream(dispatcher, route(a), "completion", {"model": "m", "prompt": "x", "stream": True})
    assert [what for what, _ in a.calls] == ["stream_completion"]


async def test_stream_falls_back_when_opening_fails(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    a.stream_factory = BackendUnavailable("a", "connection refused")
    result = await open_stream(dispatcher, route(a, b), "chat", BODY)
    assert result.backend is b
    assert dispatcher.breakers.snapshot("a").state == "open"


async def test_stream_falls_back_when_it_fails_before_its_first_event(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    failing = ScriptedStream([BackendUnavailable("a", "HTTP 503 before any event", mark_down=False)])
    a.stream_factory = lambda: failing
    result = await open_stream(dispatcher, route(a, b), "chat", BODY)
    assert result.backend is b
    assert failing.closed


async def test_stream_that_ends_without_events_falls_back(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    empty = ScriptedStream([])
    a.stream_factory = lambda: empty
    result = await open_stream(dispatcher, route(a, b), "chat", BODY)
    assert result.backend is b
    assert empty.closed


async def test_stream_503_when_every_stream_fails_early(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    a.stream_factory = lambda: ScriptedStream([])
    b.stream_factory = BackendUnavailable("b", "refused")
    err = await gateway_error(open_stream(dispatcher, route(a, b), "chat", BODY))
    assert err.status == 503
    assert "a: stream ended before any event" in err.message and "b: refused" in err.message


async def test_504_when_the_first_event_is_late(dispatcher: Dispatcher) -> None:
    a = make_backend("a", first_token_s=0.05)
    slow = ScriptedStream([chunk_event("late"), DONE], delay_s=30)
    a.stream_factory = lambda: slow
    err = await gateway_error(open_stream(dispatcher, route(a), "chat", BODY))
    assert (err.status, err.code) == (504, "backend_timeout")
    assert "first token" in err.message and "0.05s" in err.message
    assert slow.closed


async def test_keepalive_comments_are_not_the_first_token(dispatcher: Dispatcher) -> None:
    a = make_backend("a")
    a.stream_factory = lambda: ScriptedStream([b": keep-alive\n\n", b": ping\n\n", chunk_event("hi"), DONE])
    result = await open_stream(dispatcher, route(a), "chat", BODY)
    # The comments travel with the first data event instead of standing in for it.
    assert result.first == b": keep-alive\n\n: ping\n\n" + chunk_event("hi")
    assert await drain(result) == result.first + DONE


async def test_only_comments_until_the_deadline_is_a_first_token_timeout(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a", first_token_s=0.2), make_backend("b")
    chatty = ScriptedStream([b": keep-alive\n\n"] * 100, delay_s=0.01)
    a.stream_factory = lambda: chatty
    result = await open_stream(dispatcher, route(a, b), "chat", BODY)
    assert result.backend is b  # nothing reached the client, so the next backend could take over
    assert chatty.closed


async def test_stream_4xx_passes_through(dispatcher: Dispatcher) -> None:
    a, b = make_backend("a"), make_backend("b")
    original = http_error("a", 400, b'{"error":{"message":"bad","param":"stop"}}')
    a.stream_factory = original
    err = await gateway_error(open_stream(dispatcher, route(a, b), "chat", BODY))
    assert err is original
    assert b.calls == []


async def test_stream_422_before_opening(dispatcher: Dispatcher) -> None:
    body = {"model": "m", "prompt": "x", "suffix": "!", "stream": True}
    err = await gateway_error(open_stream(dispatcher, route(llamacpp()), "completion", body))
    assert (err.status, err.param) == (422, "suffix")


def test_fake_backend_is_a_backend() -> None:
    from gateway.backend import Backend

    assert isinstance(make_backend("a"), Backend)
    assert isinstance(llamacpp(), Backend)
    assert isinstance(FakeBackend, type)


async def test_the_longest_retry_after_a_backend_asked_for_is_passed_on(dispatcher: Dispatcher) -> None:
    a, b, c = make_backend("a"), make_backend("b"), make_backend("c")
    a.reply = http_error("a", 429, b'{"error": {"message": "slow down"}}', "2.5")
    b.reply = http_error("b", 503, b'{"error": {"message": "queue full"}}', "7")
    c.reply = http_error("c", 503, b'{"error": {"message": "busy"}}', "Wed, 21 Oct 2015 07:28:00 GMT")
    err = await gateway_error(call(dispatcher, route(a, b, c), "chat", BODY))
    assert err.status == 503 and err.headers["retry-after"] == "7"
    a.reply = http_error("a", 429, b'{"error": {"message": "slow down"}}', "2.5")
    err = await gateway_error(call(dispatcher, route(a, c), "chat", BODY))
    assert err.headers["retry-after"] == "3"  # rounded up to whole seconds
    # a still has about 2.5 s to wait: it is not tried, and says so.
    err = await gateway_error(call(dispatcher, route(a), "chat", BODY))
    assert err.headers["retry-after"] == "3" and "a: asked to be retried in" in err.message
    assert len(a.calls) == 1  # asked once; since then it is waiting out its Retry-After
    d = make_backend("d")
    d.reply = http_error("d", 429, b'{"error": {"message": "slow down"}}')
    err = await gateway_error(call(dispatcher, route(d), "chat", BODY))
    assert err.headers["retry-after"] == "1"  # none asked: the gateway's own default
