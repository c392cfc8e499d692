"""Every error case through the real gateway process: status, OpenAI error body, and still serving after.

The upstream is the scriptable fake (tests/fake_openai_server.py); each route of the
`fake_gateway` is named after the scenario its backend plays.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from fake_openai_server import FakeOpenAIServer
from gateway_process import GatewayProcess, assert_openai_error, read_events, sse_data, wait_until

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "hello"}]


def chat(gateway: GatewayProcess, payload: dict[str, Any] | bytes, **kwargs: Any) -> httpx.Response:
    with gateway.http() as http:
        if isinstance(payload, bytes):
            return http.post("/v1/chat/completions", content=payload,
                             headers={"content-type": "application/json"}, **kwargs)
        return http.post("/v1/chat/completions", json=payload, **kwargs)


# -- the request itself is wrong ----------------------------------------------------------------


@pytest.mark.parametrize("body", [b'{"model": "ok", "messages": [', b"not json at all", b"[1, 2]", b'"text"', b""],
                         ids=["truncated", "garbage", "array", "string", "empty"])
def test_malformed_json_is_400(fake_gateway: GatewayProcess, still_serves: Any, body: bytes) -> None:
    error = assert_openai_error(chat(fake_gateway, body), 400, code="invalid_json")
    assert error["type"] == "invalid_request_error"
    still_serves()


@pytest.mark.parametrize(("payload", "param"), [
    ({"model": "ok", "messages": MESSAGES, "max_tokens": "five"}, "max_tokens"),
    ({"model": "ok", "messages": "hello"}, "messages"),
    ({"model": 42, "messages": MESSAGES}, "model"),
    ({"model": "ok", "messages": MESSAGES, "temperature": "hot"}, "temperature"),
    ({"model": "ok", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": "ok", "messages": MESSAGES, "stream": "yes"}, "stream"),
], ids=["max_tokens", "messages", "model", "temperature", "role", "stream"])
def test_wrong_type_is_400_naming_the_field(fake_gateway: GatewayProcess, still_serves: Any,
                                            payload: dict[str, Any], param: str) -> None:
    error = assert_openai_error(chat(fake_gateway, payload), 400, param=param)
    assert param in error["message"]
    still_serves()


def test_wrong_type_through_the_sdk(fake_gateway: GatewayProcess, still_serves: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        fake_gateway.client().chat.completions.create(model="ok", messages=MESSAGES, max_tokens="lots")  # type: ignore[arg-type]
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "max_tokens"  # type: ignore[index]
    still_serves()


def test_missing_messages_is_400(fake_gateway: GatewayProcess, still_serves: Any) -> None:
    error = assert_openai_error(chat(fake_gateway, {"model": "ok"}), 400, param="messages",
                                code="missing_required_parameter")
    assert "messages" in error["message"]
    still_serves()


def test_empty_messages_is_400(fake_gateway: GatewayProcess, still_serves: Any) -> None:
    assert_openai_error(chat(fake_gateway, {"model": "ok", "messages": []}), 400, param="messages")
    still_serves()


def test_unknown_model_is_404(fake_gateway: GatewayProcess, still_serves: Any) -> None:
    error = assert_openai_error(chat(fake_gateway, {"model": "no-such-model", "messages": MESSAGES}), 404,
                                param="model", code="model_not_found")
    assert "no-such-model" in error["message"]
    with pytest.raises(openai.NotFoundError) as caught:
        fake_gateway.client().chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 404
    still_serves()


def test_body_over_the_limit_is_413(fake_gateway: GatewayProcess, still_serves: Any) -> None:
    big = {"model": "ok", "messages": [{"role": "user", "content": "x" * 10_000}]}  # limit: 4096 bytes
    error = assert_openai_error(chat(fake_gateway, big), 413, code="request_too_large")
    assert "4096" in error["message"]
    with pytest.raises(openai.APIStatusError) as caught:
        fake_gateway.client().chat.completions.create(model="ok", messages=big["messages"])
    assert caught.value.status_code == 413
    still_serves()


def test_chunked_body_over_the_limit_is_413(fake_gateway: GatewayProcess, still_serves: Any) -> None:
    """No content-length to check up front: the gateway must stop reading at the limit."""

    def body() -> Any:
        yield b'{"model": "ok", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"x" * 1000
        yield b'"}]}'

    with fake_gateway.http() as http:
        response = http.post("/v1/chat/completions", content=body(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413, code="request_too_large")
    still_serves()


def test_wrong_method_and_unknown_path(fake_gateway: GatewayProcess, still_serves: Any) -> None:
    with fake_gateway.http() as http:
        assert_openai_error(http.get("/v1/chat/completions"), 405)
        assert_openai_error(http.post("/v1/no-such-endpoint", json={}), 404)
    still_serves()


# -- backends fail --------------------------------------------------------------------------------


def test_no_healthy_backend_is_503_listing_the_backends(fake_gateway: GatewayProcess, still_serves: Any) -> None:
    response = chat(fake_gateway, {"model": "dead_only", "messages": MESSAGES})
    error = assert_openai_error(response, 503, code="no_healthy_backend")
    assert "dead_a" in error["message"] and "dead_b" in error["message"], error
    assert response.headers.get("retry-after")
    with pytest.raises(openai.APIStatusError) as caught:
        fake_gateway.client().chat.completions.create(model="dead_only", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 503
    still_serves()


def test_backend_timeout_non_stream_is_504(fake_gateway: GatewayProcess, fake: FakeOpenAIServer,
                                           still_serves: Any) -> None:
    scenario = fake.configure("slow_total", delay_before_headers_s=30)  # backend total_s: 1
    error = assert_openai_error(chat(fake_gateway, {"model": "slow_total", "messages": MESSAGES}), 504,
                                code="backend_timeout")
    assert "slow_total" in error["message"]
    assert len(scenario.requests) == 1
    scenario.release.set()
    still_serves()


@pytest.mark.parametrize("knob", ["delay_before_headers_s", "delay_before_first_chunk_s"])
def test_backend_timeout_stream_is_504(fake_gateway: GatewayProcess, fake: FakeOpenAIServer, still_serves: Any,
                                       knob: str) -> None:
    scenario = fake.configure("slow_first", **{knob: 30})  # backend first_token_s: 1
    response = chat(fake_gateway, {"model": "slow_first", "messages": MESSAGES, "stream": True})
    error = assert_openai_error(response, 504, code="backend_timeout")
    assert "first token" in error["message"]
    if knob == "delay_before_first_chunk_s":
        assert scenario.headers_sent.is_set()  # the upstream had answered; only the first event was late
    with pytest.raises(openai.APIStatusError) as caught:
        fake_gateway.client().chat.completions.create(model="slow_first", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 504
    scenario.release.set()
    still_serves()


def test_stream_past_total_deadline_ends_with_error_event(fake_gateway: GatewayProcess, fake: FakeOpenAIServer,
                                                          still_serves: Any) -> None:
    """The first events arrive in time, then the upstream stalls past `total_s`: an error event, no [DONE]."""
    scenario = fake.configure("slow_total", hold_after=1)
    with fake_gateway.http() as http:
        response = http.post("/v1/chat/completions", json={"model": "slow_total", "messages": MESSAGES,
                                                           "stream": True})
    assert response.status_code == 200
    events = sse_data(response.content)
    assert "[DONE]" not in events
    assert '"Hello"' in events[0]
    error = json.loads(events[-1])["error"]
    assert error["code"] == "backend_timeout", error
    scenario.release.set()
    still_serves()


def test_backend_4xx_is_passed_on_with_its_message(fake_gateway: GatewayProcess, fake: FakeOpenAIServer,
                                                   still_serves: Any) -> None:
    fake.configure("bad_request", status=400, error_body={"error": {
        "message": "This model's maximum context length is 2048 tokens", "type": "invalid_request_error",
        "param": "messages", "code": "context_length_exceeded"}})
    error = assert_openai_error(chat(fake_gateway, {"model": "bad_request", "messages": MESSAGES}), 400,
                                param="messages", code="context_length_exceeded")
    assert "maximum context length is 2048 tokens" in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        fake_gateway.client().chat.completions.create(model="bad_request", messages=MESSAGES, stream=True)
    assert "maximum context length is 2048 tokens" in caught.value.message
    still_serves()


def test_backend_4xx_with_a_non_json_body(fake_gateway: GatewayProcess, fake: FakeOpenAIServer,
                                          still_serves: Any) -> None:
    fake.configure("bad_request", status=422, error_body=b"unprocessable: temperature out of range")
    error = assert_openai_error(chat(fake_gateway, {"model": "bad_request", "messages": MESSAGES}), 422)
    assert "temperature out of range" in error["message"]
    still_serves()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_backend_5xx_is_502(fake_gateway: GatewayProcess, fake: FakeOpenAIServer, still_serves: Any,
                            stream: bool) -> None:
    fake.configure("server_error", status=500, error_body={"error": {"message": "CUDA out of memory",
                                                                     "type": "server_error"}})
    response = chat(fake_gateway, {"model": "server_error", "messages": MESSAGES, "stream": stream})
    error = assert_openai_error(response, 502)
    assert error["type"] == "api_error"
    assert "server_error" in error["message"] and "CUDA out of memory" in error["message"]
    still_serves()


@pytest.mark.parametrize("body", [b"<html><body>502 Bad Gateway (nginx)</body></html>", b'{"id": "x", "choices": ['],
                         ids=["html", "truncated-json"])
def test_backend_200_with_an_unusable_body_is_502(fake_gateway: GatewayProcess, fake: FakeOpenAIServer,
                                                  still_serves: Any, body: bytes) -> None:
    fake.configure("server_error", raw_body=body)
    try:
        response = chat(fake_gateway, {"model": "server_error", "messages": MESSAGES})
        assert_openai_error(response, 502)
    finally:
        still_serves()


@pytest.mark.parametrize("cut_mode", ["abort", "eof"])
def test_stream_cut_midway_ends_with_an_error_event(fake_gateway: GatewayProcess, fake: FakeOpenAIServer,
                                                    still_serves: Any, cut_mode: str) -> None:
    fake.configure("broken_stream", cut_after=2, cut_mode=cut_mode)
    with fake_gateway.http() as http:
        response = http.post("/v1/chat/completions", json={"model": "broken_stream", "messages": MESSAGES,
                                                           "stream": True})
    assert response.status_code == 200
    raw = response.content
    assert b"data: [DONE]\n\n" not in raw
    assert raw.endswith(b"\n\n")
    events = sse_data(raw)
    assert '"Hello"' in events[0] and '","' in events[1]  # what arrived before the cut was passed on
    last = json.loads(events[-1])
    assert set(last) == {"error"}
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert "broken_stream" in last["error"]["message"]

    fake.configure("broken_stream", cut_after=2, cut_mode=cut_mode)
    stream = fake_gateway.client().chat.completions.create(model="broken_stream", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["Hello", ","]
    assert "broken_stream" in caught.value.message
    still_serves()


@pytest.mark.parametrize("fmt", ["error", "data"], ids=["llamacpp-error-event", "data-error-event"])
def test_upstream_error_event_midstream_ends_with_an_error_event(fake_gateway: GatewayProcess,
                                                                 fake: FakeOpenAIServer, still_serves: Any,
                                                                 fmt: str) -> None:
    """Two chunks reach the client, then the upstream reports an error: the client gets it as an error event."""
    knobs = {"hold_after": 2, "error_event_after": 2, "error_event_format": fmt,
             "error_event_message": "slot 0 crashed"}
    scenario = fake.configure("broken_stream", **knobs)
    with fake_gateway.http() as http, http.stream("POST", "/v1/chat/completions", json={
            "model": "broken_stream", "messages": MESSAGES, "stream": True}) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        raw = read_events(chunks, 2)
        scenario.release.set()
        raw += b"".join(chunks)
    assert b"data: [DONE]\n\n" not in raw
    events = sse_data(raw)
    assert len(events) == 3, events
    assert '"Hello"' in events[0] and '","' in events[1]
    error = json.loads(events[-1])["error"]
    assert "slot 0 crashed" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}

    scenario = fake.configure("broken_stream", **knobs)
    stream = fake_gateway.client().chat.completions.create(model="broken_stream", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
            if len(received) == 2:
                scenario.release.set()
    assert received == ["Hello", ","]
    assert "slot 0 crashed" in caught.value.message
    still_serves()


def test_events_sharing_a_read_with_an_error_event_still_reach_the_client(
        fake_gateway: GatewayProcess, fake: FakeOpenAIServer, still_serves: Any) -> None:
    # "Hello" goes out alone; ",", " world" and the error event then leave in one write (one TCP segment).
    scenario = fake.configure("broken_stream", hold_after=1, coalesce_from=1, error_event_after=3,
                              error_event_message="slot 0 crashed")
    try:
        with fake_gateway.http() as http, http.stream("POST", "/v1/chat/completions", json={
                "model": "broken_stream", "messages": MESSAGES, "stream": True}) as response:
            assert response.status_code == 200
            chunks = response.iter_raw()
            raw = read_events(chunks, 1)
            scenario.release.set()
            raw += b"".join(chunks)
        events = sse_data(raw)
        assert "slot 0 crashed" in json.loads(events[-1])["error"]["message"]
        contents = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]]
        assert contents == ["Hello", ",", " world"]
    finally:
        scenario.release.set()
        still_serves()


@pytest.mark.parametrize("knobs", [{"cut_after": 0, "cut_mode": "abort"}, {"cut_after": 0, "cut_mode": "eof"},
                                   {"error_event_after": 0}], ids=["abort", "eof", "error-event"])
def test_stream_failing_before_its_first_event_is_a_status(fake_gateway: GatewayProcess, fake: FakeOpenAIServer,
                                                           still_serves: Any, knobs: dict[str, Any]) -> None:
    """Nothing was sent to the client yet, so the failure can still be an HTTP status, not a 200 stream."""
    fake.configure("broken_stream", **knobs)
    response = chat(fake_gateway, {"model": "broken_stream", "messages": MESSAGES, "stream": True})
    assert_openai_error(response, 502)
    still_serves()


# -- fallback -------------------------------------------------------------------------------------


def test_fallback_skips_a_dead_backend(fake_gateway: GatewayProcess, still_serves: Any) -> None:
    response = fake_gateway.client().chat.completions.with_raw_response.create(model="fallback", messages=MESSAGES)
    assert response.status_code == 200
    assert response.headers["x-gateway-backend"] == "ok"
    assert response.parse().model == "fallback"
    stream = fake_gateway.client().chat.completions.with_raw_response.create(
        model="fallback", messages=MESSAGES, stream=True)
    assert stream.headers["x-gateway-backend"] == "ok"
    assert "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices) == "Hello, world!"
    still_serves()


FAILS_BEFORE_FIRST_BYTE = {
    "busy-503": ("fallback_busy", "busy", {"status": 503, "error_body": {"error": {"message": "queue full"}}}, False),
    "busy-503-stream": ("fallback_busy", "busy", {"status": 503}, True),
    "error-500": ("fallback_error", "server_error", {"status": 500}, False),
    "error-500-stream": ("fallback_error", "server_error", {"status": 500}, True),
    "first-token-timeout": ("fallback_slow", "slow_first", {"delay_before_first_chunk_s": 30}, True),
    "cut-before-first-event": ("fallback_broken", "broken_stream", {"cut_after": 0}, True),
}


@pytest.mark.parametrize("case", list(FAILS_BEFORE_FIRST_BYTE), ids=list(FAILS_BEFORE_FIRST_BYTE))
def test_fallback_after_a_failure_before_the_first_byte(fake_gateway: GatewayProcess, fake: FakeOpenAIServer,
                                                        still_serves: Any, case: str) -> None:
    """The first backend is healthy but fails before sending anything: the next one serves the request."""
    route, first, knobs, stream = FAILS_BEFORE_FIRST_BYTE[case]
    failing = fake.configure(first, **knobs)
    response = chat(fake_gateway, {"model": route, "messages": MESSAGES, "stream": stream})
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-backend"] == "ok"
    assert len(failing.requests) == 1  # it was tried first
    if stream:
        events = sse_data(response.content)
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    else:
        text = response.json()["choices"][0]["message"]["content"]
    assert text == "Hello, world!"
    failing.release.set()
    still_serves()


def test_gateway_survives_an_upstream_left_hanging(fake_gateway: GatewayProcess, fake: FakeOpenAIServer,
                                                   still_serves: Any) -> None:
    """After a timeout the gateway drops the upstream connection instead of waiting on it."""
    scenario = fake.configure("slow_total", delay_before_headers_s=30)
    assert_openai_error(chat(fake_gateway, {"model": "slow_total", "messages": MESSAGES}), 504)
    assert wait_until(scenario.client_disconnected.is_set, timeout=10), "the gateway kept the upstream connection"
    still_serves()
