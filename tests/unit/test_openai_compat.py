"""The openai_compat plugin against a scripted upstream: URLs, headers, error mapping, stream framing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from gateway.backend import BackendContext, BackendUnavailable
from gateway.config import BackendConfig
from gateway.errors import GatewayError
from gateway.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)
from plugins.llamacpp.backend import LlamaCppBackend
from plugins.openai_compat.backend import OpenAICompatBackend
from plugins.openai_compat.errors import error_message, http_error, transport_error

from .fakes import DONE, chat_completion_json, chunk_event


class ScriptedUpstreamStream:
    def __init__(self, status: int, chunks: list[bytes | UpstreamError], body: bytes = b"",
                 retry_after: str | None = None) -> None:
        self.status = status
        self.content_type = "text/event-stream"
        self.retry_after = retry_after
        self._chunks = chunks
        self._body = body
        self.read_chunks = 0
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            if isinstance(chunk, UpstreamError):
                raise chunk
            self.read_chunks += 1
            yield chunk

    async def read(self) -> bytes:
        return self._body

    async def aclose(self) -> None:
        self.closed = True


class ScriptedUpstream:
    """Records requests and answers each with the next scripted response, stream or error."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.responses: list[UpstreamResponse | UpstreamError] = []
        self.streams: list[ScriptedUpstreamStream | UpstreamError] = []

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: dict[str, str] | None = None, timeouts: Any) -> UpstreamResponse:
        self.requests.append({"method": method, "url": url, "body": body, "headers": headers, "timeouts": timeouts})
        answer = self.responses.pop(0)
        if isinstance(answer, UpstreamError):
            raise answer
        return answer

    async def open_stream(self, method: str, url: str, *, body: bytes | None = None,
                          headers: dict[str, str] | None = None, timeouts: Any) -> ScriptedUpstreamStream:
        self.requests.append({"method": method, "url": url, "body": body, "headers": headers, "timeouts": timeouts})
        answer = self.streams.pop(0)
        if isinstance(answer, UpstreamError):
            raise answer
        return answer

    async def aclose(self) -> None:
        pass


def backend(url: str = "http://gpu:8000", cls: type[OpenAICompatBackend] = OpenAICompatBackend,
            **config: Any) -> tuple[OpenAICompatBackend, ScriptedUpstream]:
    upstream = ScriptedUpstream()
    plugin = "llamacpp" if cls is LlamaCppBackend else "openai_compat"
    cfg = BackendConfig(name="b1", plugin=plugin, model="served-model", url=url, **config)
    return cls(cfg, BackendContext(upstream=upstream)), upstream


@pytest.mark.parametrize("url", ["http://gpu:8000", "http://gpu:8000/", "http://gpu:8000/v1", "http://gpu:8000/v1/"])
async def test_url_with_or_without_v1_and_the_body_sent(url: str) -> None:
    b, upstream = backend(url, api_key="sk-1")
    upstream.responses.append(UpstreamResponse(status=200, body=chat_completion_json()))
    body = {"model": "client-name", "messages": [{"role": "user", "content": "hi"}], "top_k": None}
    assert await b.chat(body) == chat_completion_json()
    sent = upstream.requests[0]
    assert (sent["method"], sent["url"]) == ("POST", "http://gpu:8000/v1/chat/completions")
    assert sent["headers"]["authorization"] == "Bearer sk-1"
    assert msgspec.json.decode(sent["body"]) == {**body, "model": "served-model"}


@pytest.mark.parametrize(
    ("status", "cls", "gateway_status", "mark_down"),
    [(500, BackendUnavailable, 502, False), (501, BackendUnavailable, 502, False),
     (502, BackendUnavailable, 503, False), (503, BackendUnavailable, 503, False),
     (429, BackendUnavailable, 503, False), (400, GatewayError, 400, None), (404, GatewayError, 404, None)],
)
async def test_non_200_answers_map_to_gateway_errors(
    status: int, cls: type[GatewayError], gateway_status: int, mark_down: bool | None
) -> None:
    b, upstream = backend()
    upstream.responses.append(UpstreamResponse(status=status, body=b'{"error":{"message":"nope","param":"x"}}'))
    with pytest.raises(GatewayError) as info:
        await b.completion({"model": "m", "prompt": "p"})
    err = info.value
    assert type(err) is cls
    assert err.status == gateway_status
    assert "nope" in err.message
    if mark_down is not None:
        assert isinstance(err, BackendUnavailable) and err.mark_down is mark_down
    else:
        assert err.param == "x"


@pytest.mark.parametrize(
    ("error", "status", "unavailable"),
    [
        (UpstreamConnectError("refused"), 503, True),
        (UpstreamTimeout("connect", 2), 503, True),
        (UpstreamTimeout("first byte", 30), 504, False),
        (UpstreamTimeout("total", 300), 504, False),
        (UpstreamProtocolError("reset"), 502, False),
    ],
)
def test_transport_errors(error: UpstreamError, status: int, unavailable: bool) -> None:
    err = transport_error("b1", error)
    assert err.status == status
    assert isinstance(err, BackendUnavailable) is unavailable
    if unavailable:
        assert err.mark_down


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error":{"message":"m","param":"p","code":"c"}}', ("m", "p", "c")),
        (b'{"error":{"message":"m","code":400}}', ("m", None, "400")),
        (b'{"error":"just text"}', ("just text", None, None)),
        (b'{"detail":"fastapi style"}', ("fastapi style", None, None)),
        (b"Internal Server Error", ("Internal Server Error", None, None)),
        (b"", ("no error message", None, None)),
        (b"[1,2]", ("[1,2]", None, None)),
    ],
)
def test_error_message_variants(body: bytes, expected: tuple[str, str | None, str | None]) -> None:
    assert error_message(body) == expected


def test_http_error_message_names_the_backend() -> None:
    err = http_error("b1", 400, b'{"error":{"message":"too long"}}')
    assert err.message == "backend 'b1': too long"


async def collect(stream: Any) -> list[bytes]:
    return [events async for events in stream]


async def test_stream_forwards_whole_events_and_drains_after_done() -> None:
    b, upstream = backend()
    body = chunk_event("a") + chunk_event("b") + DONE
    upstream_stream = ScriptedUpstreamStream(200, [body[:7], body[7:70], body[70:], b"\n"])
    upstream.streams.append(upstream_stream)
    stream = await b.stream_chat({"model": "m", "messages": []})
    out = await collect(stream)
    assert b"".join(out) == body
    assert all(o.endswith(b"\n\n") for o in out)
    assert upstream_stream.read_chunks == 4
    await stream.aclose()
    assert upstream_stream.closed


async def test_stream_cut_before_done_raises_502() -> None:
    b, upstream = backend()
    upstream.streams.append(ScriptedUpstreamStream(200, [chunk_event("a"), b"data: {\"partial"]))
    stream = await b.stream_chat({"model": "m", "messages": []})
    out: list[bytes] = []
    with pytest.raises(GatewayError) as info:
        async for events in stream:
            out.append(events)
    assert out == [chunk_event("a")]
    assert (info.value.status, info.value.code) == (502, "backend_error")
    assert "before data: [DONE]" in info.value.message


@pytest.mark.parametrize(
    "event",
    [b'error: {"message":"slot crashed"}\n\n', b'data: {"error":{"message":"slot crashed","code":500}}\n\n'],
)
async def test_stream_error_event_from_the_server_raises(event: bytes) -> None:
    b, upstream = backend()
    upstream.streams.append(ScriptedUpstreamStream(200, [chunk_event("a"), event]))
    stream = await b.stream_chat({"model": "m", "messages": []})
    with pytest.raises(GatewayError) as info:
        await collect(stream)
    assert info.value.status == 502 and "slot crashed" in info.value.message


async def test_a_chunk_mentioning_error_in_content_is_not_an_error() -> None:
    b, upstream = backend()
    body = chunk_event('the "error" was mine') + DONE
    upstream.streams.append(ScriptedUpstreamStream(200, [body]))
    stream = await b.stream_chat({"model": "m", "messages": []})
    assert b"".join(await collect(stream)) == body


async def test_stream_connection_lost_mid_way_is_502() -> None:
    b, upstream = backend()
    upstream.streams.append(ScriptedUpstreamStream(200, [chunk_event("a"), UpstreamProtocolError("reset")]))
    stream = await b.stream_chat({"model": "m", "messages": []})
    with pytest.raises(GatewayError) as info:
        await collect(stream)
    assert info.value.status == 502


async def test_stream_refused_with_a_status_reads_the_error_body_and_closes() -> None:
    b, upstream = backend()
    refused = ScriptedUpstreamStream(503, [], body=b'{"error":{"message":"loading model"}}')
    upstream.streams.append(refused)
    with pytest.raises(BackendUnavailable) as info:
        await b.stream_chat({"model": "m", "messages": []})
    assert "HTTP 503: loading model" in info.value.reason
    assert refused.closed


async def test_embeddings_only_when_enabled() -> None:
    b, upstream = backend()
    with pytest.raises(GatewayError) as info:
        await b.embeddings({"model": "m", "input": "x"})
    assert (info.value.status, info.value.code) == (422, "unsupported_endpoint")
    assert upstream.requests == []
    b, upstream = backend(options={"embeddings": True})
    upstream.responses.append(UpstreamResponse(status=200, body=b'{"object":"list","data":[]}'))
    await b.embeddings({"model": "m", "input": "x"})
    assert upstream.requests[0]["url"] == "http://gpu:8000/v1/embeddings"


async def test_health_uses_the_configured_path_and_survives_transport_errors() -> None:
    b, upstream = backend(options={"health_path": "/ping"})
    upstream.responses += [UpstreamResponse(status=200, body=b""), UpstreamResponse(status=503, body=b""),
                           UpstreamConnectError("refused")]
    assert await b.health() is True
    assert await b.health() is False
    assert await b.health() is False
    assert upstream.requests[0]["url"] == "http://gpu:8000/ping"


def test_extra_params_are_supported() -> None:
    b, _ = backend(options={"extra_params": ["top_k"]})
    assert "top_k" in b.supported_params("chat") and "top_k" not in b.supported_params("embedding")
    assert "top_k" not in backend()[0].supported_params("chat")


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"extra_params": "top_k"}, ("options.extra_params", "expected array, got str")),
        ({"bogus": 1}, ("options.bogus", "unknown key")),
    ],
)
def test_validate_config(options: dict[str, Any], problem: tuple[str, str]) -> None:
    config = BackendConfig(name="b", plugin="openai_compat", model="m", options=options)
    found = dict(OpenAICompatBackend.validate_config(config))
    assert found["url"] == "required key is missing"
    assert found[problem[0]] == problem[1]


async def test_llamacpp_load_reads_metrics() -> None:
    b, upstream = backend(cls=LlamaCppBackend)
    upstream.responses.append(UpstreamResponse(
        status=200, body=b"llamacpp:requests_processing 2\nllamacpp:requests_deferred 1\n"
                         b"llamacpp:kv_cache_usage_ratio 0.5\n"))
    upstream.responses.append(UpstreamResponse(status=501, body=b'{"error": "slots endpoint disabled"}'))
    load = await b.load()
    # Without /slots (disabled on that server), the numbers come from /metrics alone.
    assert (load.running, load.waiting, load.kv_cache_usage, load.capacity) == (2.0, 1.0, 0.5, None)
    assert [r["url"] for r in upstream.requests] == ["http://gpu:8000/metrics", "http://gpu:8000/slots"]
    assert "top_k" in b.supported_params("chat")
