"""Streams pass through the gateway event by event, never buffered, and end cleanly for gone clients.

The upstream is the fake server: it sends a first chunk, then holds the stream until the
test says so. Only a gateway that forwards events as they arrive lets the client see the
first chunk while the upstream is still holding back the rest.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from fake_openai_server import FakeOpenAIServer
from gateway_process import GatewayProcess, read_events, sse_data, value, wait_until

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "stream please"}]
CONTENT = ["first", " second", " third", " fourth"]


def test_sdk_stream_is_not_buffered(fake_gateway: GatewayProcess, fake: FakeOpenAIServer) -> None:
    scenario = fake.configure("held", content=CONTENT, hold_after=1, hold_timeout_s=30)
    stream = fake_gateway.client().chat.completions.create(
        model="held", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    chunks = iter(stream)

    first = next(chunks)
    # The client holds the first chunk while the upstream has not sent its last: nothing waited for the end.
    assert first.choices[0].delta.content == "first"
    assert scenario.first_chunk_sent.is_set()
    assert not scenario.last_chunk_sent.is_set(), "the gateway delivered the first chunk only after the whole stream"
    assert scenario.chunks_sent == 1

    scenario.release.set()
    rest = list(chunks)
    assert scenario.last_chunk_sent.is_set()
    assert "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices) == "".join(CONTENT)
    assert rest[-1].usage is not None and rest[-1].usage.completion_tokens == len(CONTENT)
    assert all(c.model == "held" for c in [first, *rest])


def test_raw_stream_is_not_buffered(fake_gateway: GatewayProcess, fake: FakeOpenAIServer) -> None:
    """The same, watching the bytes: the first event arrives whole, in its own read, before the rest exists."""
    scenario = fake.configure("held", content=CONTENT, hold_after=1, hold_timeout_s=30)
    with fake_gateway.http() as http, http.stream("POST", "/v1/chat/completions", json={
            "model": "held", "messages": MESSAGES, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-gateway-backend"] == "held"
        chunks = response.iter_raw()
        head = read_events(chunks, 1)
        assert not scenario.last_chunk_sent.is_set()
        assert head.endswith(b"\n\n") and len(sse_data(head)) == 1
        assert json.loads(sse_data(head)[0])["choices"][0]["delta"]["content"] == "first"
        scenario.release.set()
        raw = head + b"".join(chunks)
    events = sse_data(raw)
    assert events[-1] == "[DONE]"
    assert raw.endswith(b"data: [DONE]\n\n")
    assert [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-2]] == CONTENT


def test_client_disconnect_closes_the_upstream_stream(fake_gateway: GatewayProcess, fake: FakeOpenAIServer) -> None:
    """A client that leaves mid-stream must not leave the gateway reading (and the backend generating) for nobody."""
    scenario = fake.configure("held", content=CONTENT, hold_after=1, hold_timeout_s=30)
    stream = fake_gateway.client().chat.completions.create(model="held", messages=MESSAGES, stream=True)
    assert next(iter(stream)).choices[0].delta.content == "first"
    stream.close()
    assert wait_until(scenario.client_disconnected.is_set, timeout=15), \
        "the gateway kept the upstream stream open after its client went away"
    assert not scenario.last_chunk_sent.is_set()

    # And the gateway carries on: a complete stream through the same backend.
    fake.configure("held", content=CONTENT)
    stream = fake_gateway.client().chat.completions.create(model="held", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "".join(CONTENT)


def hang_up_after_upstream_got_it(gateway: GatewayProcess, scenario: Any, body: dict[str, Any]) -> None:
    """Send a request on a raw socket and close it once the upstream has received the forwarded request."""
    payload = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(head + payload)
        assert wait_until(lambda: bool(scenario.requests), timeout=10), "the request never reached the upstream"


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream-before-first-token"])
def test_client_giving_up_before_the_first_byte_releases_the_upstream(
        fake_gateway: GatewayProcess, fake: FakeOpenAIServer, stream: bool) -> None:
    knob = "delay_before_first_chunk_s" if stream else "delay_before_headers_s"
    scenario = fake.configure("held", **{knob: 60})

    def hang_ups() -> float:
        with fake_gateway.http() as http:
            text = http.get("/metrics").text
        return value(text, "gateway_requests_total", route="held", backend="", status="499") or 0

    before = hang_ups()
    try:
        hang_up_after_upstream_got_it(fake_gateway, scenario, {"model": "held", "messages": MESSAGES,
                                                               "stream": stream})
        # The gateway is local and idle: a few seconds is ample to notice, while the upstream would wait 60.
        assert wait_until(scenario.client_disconnected.is_set, timeout=5), \
            "the upstream request kept running after the client hung up"
        assert wait_until(lambda: hang_ups() == before + 1, timeout=5), "the hang-up was not counted as a 499"
    finally:
        scenario.release.set()


async def test_concurrent_streams_with_the_async_sdk(fake_gateway: GatewayProcess, fake: FakeOpenAIServer) -> None:
    """Many streams at once through one gateway (pooled upstream connections) all arrive complete and intact."""
    fake.configure("ok", content=[f" w{i}" for i in range(20)], delay_between_chunks_s=0.005)
    client = fake_gateway.async_client()

    async def one(i: int) -> tuple[str, Any]:
        stream = await client.chat.completions.create(
            model="ok", messages=[{"role": "user", "content": f"request {i}"}], stream=True,
            stream_options={"include_usage": True})
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
        return text, usage

    try:
        results = await asyncio.gather(*(one(i) for i in range(12)))
    finally:
        await client.close()
    expected = "".join(f" w{i}" for i in range(20))
    for text, usage in results:
        assert text == expected
        assert usage is not None and usage.completion_tokens == 20
    assert len(fake.scenario("ok").requests) == 12


async def test_concurrent_non_stream_requests(fake_gateway: GatewayProcess) -> None:
    client = fake_gateway.async_client()
    try:
        responses = await asyncio.gather(*(
            client.chat.completions.with_raw_response.create(
                model="ok", messages=[{"role": "user", "content": f"n{i}"}]) for i in range(16)))
    finally:
        await client.close()
    request_ids = {r.headers["x-request-id"] for r in responses}
    assert len(request_ids) == 16  # one fresh id per request
    for response in responses:
        assert response.status_code == 200
        assert response.parse().choices[0].message.content == "Hello, world!"
