"""OllamaBackend in this process against the Ollama emulator: every route, error class and fault."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
from contract.providers.ollama import OllamaEmulatorProcess, backend_config, running_emulator
from gateway_process import closed_port

from gateway.backend import BackendContext, BackendUnavailable
from gateway.config import BackendConfig
from gateway.errors import GatewayError
from gateway.upstream.aiohttp_client import AiohttpUpstream
from plugins.ollama import OllamaBackend

pytestmark = pytest.mark.integration

USER = [{"role": "user", "content": "why is the sky blue?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OllamaEmulatorProcess]:
    with running_emulator(tmp_path_factory.mktemp("ollama-plugin") / "emulator.log") as server:
        yield server


@pytest.fixture
def knobs(emulator: OllamaEmulatorProcess) -> Iterator[OllamaEmulatorProcess]:
    """The emulator, with its knobs put back whatever the test set."""
    yield emulator
    emulator.knobs(fault="none", ttft_ms=0, tpot_ms=0, fault_after_tokens=2)


@pytest.fixture
async def upstream() -> AsyncIterator[AiohttpUpstream]:
    client = AiohttpUpstream()
    yield client
    await client.aclose()


def make(upstream: AiohttpUpstream, url: str, **extra: Any) -> OllamaBackend:
    config = msgspec.convert(backend_config(url, **extra), BackendConfig)
    return OllamaBackend(config, BackendContext(upstream=upstream))


@pytest.fixture
def ollama(upstream: AiohttpUpstream, emulator: OllamaEmulatorProcess) -> OllamaBackend:
    return make(upstream, emulator.url, options={"num_ctx": 2048, "keep_alive": "10m"})


async def read_stream(stream: Any) -> tuple[list[Any], GatewayError | None]:
    events: list[Any] = []
    failure = None
    try:
        async for batch in stream:
            for event in batch.split(b"\n\n")[:-1]:
                data = event.removeprefix(b"data: ")
                events.append("[DONE]" if data == b"[DONE]" else msgspec.json.decode(data))
    except GatewayError as err:
        failure = err
    finally:
        await stream.aclose()
    return events, failure


async def test_chat_and_its_stream_agree(ollama: OllamaBackend, emulator: OllamaEmulatorProcess) -> None:
    whole = msgspec.json.decode(await ollama.chat({"messages": USER, "max_tokens": 4, "temperature": 0.1,
                                                   "stop": ["never"]}))
    sent = emulator.requests()[-1]
    assert sent["path"] == "/api/chat" and sent["body"]["stream"] is False
    assert sent["body"]["options"] == {"num_ctx": 2048, "temperature": 0.1, "num_predict": 4, "stop": ["never"]}
    assert sent["body"]["keep_alive"] == "10m" and sent["body"]["model"] == "llama3.2"
    assert whole["object"] == "chat.completion" and whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"]["completion_tokens"] == 4
    events, failure = await read_stream(await ollama.stream_chat({
        "messages": USER, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}))
    assert failure is None and events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["usage"] == whole["usage"]


async def test_completion_is_raw_and_streams(ollama: OllamaBackend, emulator: OllamaEmulatorProcess) -> None:
    whole = msgspec.json.decode(await ollama.completion({"prompt": "Once upon a time", "max_tokens": 3}))
    assert emulator.requests()[-1]["body"]["raw"] is True
    assert whole["object"] == "text_completion" and whole["usage"]["completion_tokens"] == 3
    events, failure = await read_stream(await ollama.stream_completion({"prompt": "Once", "max_tokens": 3}))
    assert failure is None
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == whole["choices"][0]["text"]


async def test_embeddings(ollama: OllamaBackend, emulator: OllamaEmulatorProcess) -> None:
    floats = msgspec.json.decode(await ollama.embeddings({"input": ["one", "two three"], "dimensions": 16}))
    assert emulator.requests()[-1]["body"]["dimensions"] == 16
    assert [d["index"] for d in floats["data"]] == [0, 1] and len(floats["data"][0]["embedding"]) == 16
    assert floats["usage"]["prompt_tokens"] == 3
    packed = msgspec.json.decode(await ollama.embeddings({"input": "one", "encoding_format": "base64",
                                                         "dimensions": 16}))
    assert len(base64.b64decode(packed["data"][0]["embedding"])) == 16 * 4


async def test_tool_calls_and_structured_output(ollama: OllamaBackend) -> None:
    called = msgspec.json.decode(await ollama.chat({"messages": [{"role": "user", "content": "Tokyo"}],
                                                    "tools": TOOLS}))
    choice = called["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and call["function"]["name"] == "get_weather"
    assert msgspec.json.decode(call["function"]["arguments"]) == {"city": "Tokyo"}
    events, _ = await read_stream(await ollama.stream_chat({"messages": [{"role": "user", "content": "Tokyo"}],
                                                            "tools": TOOLS}))
    assert any("tool_calls" in e["choices"][0]["delta"] for e in events[:-1])
    schema = {"type": "object", "properties": {"age": {"type": "integer"}, "ok": {"type": "boolean"}}}
    shaped = msgspec.json.decode(await ollama.chat({"messages": USER, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}))
    assert set(msgspec.json.decode(shaped["choices"][0]["message"]["content"])) == {"age", "ok"}


async def test_model_not_pulled_is_404_naming_it(upstream: AiohttpUpstream, emulator: OllamaEmulatorProcess) -> None:
    missing = make(upstream, emulator.url, model="qwen9:70b")
    for call in (missing.chat({"messages": USER}), missing.stream_chat({"messages": USER}),
                 missing.embeddings({"input": "x"})):
        with pytest.raises(GatewayError) as caught:
            await call
        assert caught.value.status == 404 and caught.value.code == "model_not_found"
        assert "qwen9:70b" in caught.value.message and "ollama pull" in caught.value.message


async def test_a_prompt_over_the_context_is_400_with_ollamas_message(upstream: AiohttpUpstream,
                                                                     emulator: OllamaEmulatorProcess) -> None:
    strict = make(upstream, emulator.url, options={"num_ctx": 8, "shift": False})
    with pytest.raises(GatewayError) as caught:
        await strict.chat({"messages": [{"role": "user", "content": "word " * 20}]})
    assert caught.value.status == 400 and "longer than the context length" in caught.value.message


@pytest.mark.parametrize(("fault", "status", "mark_down"), [("http_503", 503, False), ("http_429", 503, False),
                                                            ("http_500", 502, False), ("refuse", 503, True)])
async def test_failures_before_the_first_byte(ollama: OllamaBackend, knobs: OllamaEmulatorProcess, fault: str,
                                              status: int, mark_down: bool) -> None:
    knobs.knobs(fault=fault)
    for call in (ollama.chat({"messages": USER}), ollama.stream_chat({"messages": USER})):
        with pytest.raises(BackendUnavailable) as caught:
            await call
        assert caught.value.status == status and caught.value.mark_down is mark_down
    assert ollama.in_flight == 0


@pytest.mark.parametrize(("fault", "message"), [("cut_stream", "connection lost"), ("malformed_chunk", "malformed"),
                                                ("stream_error", "an error was encountered while running the model")])
async def test_failures_mid_stream(ollama: OllamaBackend, knobs: OllamaEmulatorProcess, fault: str,
                                   message: str) -> None:
    knobs.knobs(fault=fault, fault_after_tokens=2)
    events, failure = await read_stream(await ollama.stream_chat({"messages": USER}))
    assert failure is not None and failure.status == 502 and message in failure.message
    assert len(events) == 2 and "[DONE]" not in events  # what arrived before the fault, and no end marker
    with pytest.raises(GatewayError) as caught:
        await ollama.chat({"messages": USER})  # the same fault on a whole answer
    assert caught.value.status == 502
    assert ollama.in_flight == 0


async def test_hang_times_out(upstream: AiohttpUpstream, knobs: OllamaEmulatorProcess) -> None:
    impatient = make(upstream, knobs.url, timeouts={"connect_s": 1, "first_token_s": 0.5, "total_s": 0.8})
    knobs.knobs(fault="hang")
    with pytest.raises(GatewayError) as first_byte:
        await impatient.stream_chat({"messages": USER})
    with pytest.raises(GatewayError) as total:
        await impatient.chat({"messages": USER})
    assert (first_byte.value.status, total.value.status) == (504, 504)


async def test_health_and_version(ollama: OllamaBackend, upstream: AiohttpUpstream) -> None:
    assert await ollama.health() is True and ollama.server_version
    assert "llama3.2:latest" in await ollama.pulled_models()
    assert await make(upstream, f"http://127.0.0.1:{closed_port()}").health() is False


async def test_load_counts_open_requests_and_reads_ps(upstream: AiohttpUpstream, knobs: OllamaEmulatorProcess) -> None:
    ollama = make(upstream, knobs.url, options={"num_parallel": 1, "num_ctx": 1024})
    knobs.knobs(tpot_ms=50)
    streams = [await ollama.stream_chat({"messages": USER}) for _ in range(2)]
    load = await ollama.load()
    assert (load.running, load.waiting, load.capacity, load.kv_cache_usage) == (1, 1, 1, None)
    assert load.model_loaded and load.context_length == 1024 and load.loaded_models >= 1
    await asyncio.gather(*(read_stream(s) for s in streams))
    assert (await ollama.load()).running == 0


async def test_start_warns_about_a_model_not_pulled(upstream: AiohttpUpstream, emulator: OllamaEmulatorProcess,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.plugins.ollama"):
        await make(upstream, emulator.url, model="llama3.2:latest").start()
        assert not caplog.records
        await make(upstream, emulator.url, model="phi9").start()
        await make(upstream, f"http://127.0.0.1:{closed_port()}").start()  # a server not up yet is no failure
    assert "ollama pull phi9" in caplog.records[0].getMessage() and len(caplog.records) == 2
