"""The tensorrt_llm plugin against both emulators (run in-process): traffic, errors, health and load.

Each behaviour both ways of serving share is checked once per mode; the emulators speak
trtllm-serve's OpenAI routes and Triton's generate extension respectively.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from gateway.backend import Backend, BackendContext, BackendUnavailable, EventStream
from gateway.config import BackendConfig
from gateway.errors import GatewayError
from gateway.upstream.aiohttp_client import AiohttpUpstream
from plugins.emulation import Knobs
from plugins.tensorrt_llm import TensorRTLLMBackend
from plugins.tensorrt_llm.emulator.inprocess import RunningEmulator, running_emulator

pytestmark = pytest.mark.integration

MODES = ["trtllm_serve", "triton"]
REPLY = "Hello from the emulator. This reply is deterministic and repeats on demand."
MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest_asyncio.fixture(scope="module")
async def emulators() -> AsyncIterator[dict[str, RunningEmulator]]:
    async with running_emulator("triton") as triton, running_emulator("trtllm_serve") as serve:
        yield {"triton": triton, "trtllm_serve": serve}


@pytest_asyncio.fixture(scope="module")
async def upstream() -> AsyncIterator[AiohttpUpstream]:
    client = AiohttpUpstream()
    yield client
    await client.aclose()


@pytest.fixture(autouse=True)
def default_knobs(emulators: dict[str, RunningEmulator]) -> Iterator[None]:
    for emulator in emulators.values():
        emulator.runtime.update(msgspec.structs.asdict(Knobs()))
    yield
    for emulator in emulators.values():
        emulator.runtime.update(msgspec.structs.asdict(Knobs()))


def make(emulators: dict[str, RunningEmulator], upstream: AiohttpUpstream, mode: str, *, url: str | None = None,
         timeouts: dict[str, float] | None = None, **options: Any) -> Backend:
    base = url or emulators[mode].url
    if mode == "triton":
        options.setdefault("metrics_url", base + "/metrics")
    block = {"name": f"trt-{mode}", "plugin": "tensorrt_llm", "model": "trt-model", "url": base,
             "options": {"mode": mode, **options},
             "timeouts": timeouts or {"connect_s": 2, "first_token_s": 10, "total_s": 20}}
    backend: Backend = TensorRTLLMBackend(msgspec.convert(block, BackendConfig), BackendContext(upstream=upstream))
    return backend


def knobs(emulators: dict[str, RunningEmulator], mode: str, **changes: Any) -> None:
    emulators[mode].runtime.update(changes)


async def drain(stream: EventStream) -> tuple[list[dict[str, Any]], bytes, GatewayError | None]:
    """(decoded data events, raw bytes, the error that ended the stream if any)."""
    raw, failure = b"", None
    try:
        async for events in stream:
            assert events.endswith(b"\n\n"), events  # whole events only
            raw += events
    except GatewayError as err:
        failure = err
    finally:
        await stream.aclose()
    data = [line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:")]
    return [json.loads(d) for d in data if d != b"[DONE]"], raw, failure


def text_of(chunks: list[dict[str, Any]]) -> str:
    pieces = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            pieces.append(choice.get("delta", {}).get("content") or choice.get("text") or "")
    return "".join(pieces)


# -- traffic ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_chat_and_its_stream_agree(emulators: Any, upstream: AiohttpUpstream, mode: str) -> None:
    backend = make(emulators, upstream, mode)
    whole = json.loads(await backend.chat({"model": "x", "messages": MESSAGES, "max_tokens": 3}))
    assert whole["object"] == "chat.completion"
    choice = whole["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"] == "Hello from the"
    assert choice["finish_reason"] == "length"
    assert whole["usage"]["completion_tokens"] == 3 and "estimated" not in whole["usage"]

    chunks, raw, failure = await drain(await backend.stream_chat({
        "model": "x", "messages": MESSAGES, "max_tokens": 3, "stream": True,
        "stream_options": {"include_usage": True}}))
    assert failure is None and raw.endswith(b"data: [DONE]\n\n")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert text_of(chunks) == "Hello from the"
    assert [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert chunks[-1]["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]


@pytest.mark.parametrize("mode", MODES)
async def test_completion_natural_end_and_stop_string(emulators: Any, upstream: AiohttpUpstream, mode: str) -> None:
    backend = make(emulators, upstream, mode)
    whole = json.loads(await backend.completion({"model": "x", "prompt": "Once upon a time"}))
    assert whole["object"] == "text_completion"
    assert whole["choices"][0]["text"] == REPLY and whole["choices"][0]["finish_reason"] == "stop"
    stopped = json.loads(await backend.completion({"model": "x", "prompt": "Once", "stop": ["reply"]}))
    assert stopped["choices"][0]["text"] == "Hello from the emulator. This "
    assert stopped["choices"][0]["finish_reason"] == "stop"
    chunks, raw, failure = await drain(await backend.stream_completion(
        {"model": "x", "prompt": "Once", "stop": ["reply"], "stream": True}))
    assert failure is None and raw.endswith(b"data: [DONE]\n\n")
    assert text_of(chunks) == "Hello from the emulator. This "
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_triton_without_exclude_input_cuts_the_echoed_prompt(emulators: Any, upstream: AiohttpUpstream) -> None:
    """An older ensemble without `exclude_input_in_output` returns prompt + reply."""
    backend = make(emulators, upstream, "triton", exclude_input_in_output=False, token_counts=False)
    whole = json.loads(await backend.chat({"model": "x", "messages": MESSAGES, "max_tokens": 2}))
    assert whole["choices"][0]["message"]["content"] == "Hello from"
    assert whole["usage"]["estimated"] is True
    chunks, _, failure = await drain(await backend.stream_chat(
        {"model": "x", "messages": MESSAGES, "max_tokens": 2, "stream": True}))
    assert failure is None and text_of(chunks) == "Hello from"
    echoed = json.loads(await backend.completion({"model": "x", "prompt": "Say", "max_tokens": 1, "echo": True}))
    assert echoed["choices"][0]["text"] == "SayHello"


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "body", "message"), [
    ("trtllm_serve", {"max_tokens": 5000}, "should not exceed max_seq_len"),
    ("triton", {"top_k": "five"}, "attempt to access JSON non-signed-integer as signed-integer"),
])
async def test_bad_parameter_is_400_with_the_server_message(emulators: Any, upstream: AiohttpUpstream, mode: str,
                                                            body: dict[str, Any], message: str) -> None:
    backend = make(emulators, upstream, mode)
    for call in (backend.chat, backend.stream_chat):
        with pytest.raises(GatewayError) as caught:
            await call({"model": "x", "messages": MESSAGES, **body})
        assert caught.value.status == 400 and message in caught.value.message


async def test_unknown_triton_model_is_404_naming_it(emulators: Any, upstream: AiohttpUpstream) -> None:
    backend = make(emulators, upstream, "triton", model_name="llama_ensemble")
    for call in (backend.chat, backend.stream_chat):
        with pytest.raises(GatewayError) as caught:
            await call({"model": "x", "messages": MESSAGES})
        assert caught.value.status == 404 and caught.value.code == "model_not_found"
        assert "llama_ensemble" in caught.value.message
    assert await backend.health() is False


@pytest.mark.parametrize("mode", MODES)
async def test_overloaded_is_unavailable_without_marking_down(emulators: Any, upstream: AiohttpUpstream,
                                                              mode: str) -> None:
    backend = make(emulators, upstream, mode)
    knobs(emulators, mode, max_concurrency=1, max_queue=0, tpot_ms=100)
    holder = asyncio.create_task(backend.chat({"model": "x", "messages": MESSAGES, "max_tokens": 6}))
    try:
        await wait_for(lambda: emulators[mode].runtime.running == 1)
        with pytest.raises(BackendUnavailable) as caught:
            await backend.chat({"model": "x", "messages": MESSAGES})
        assert caught.value.status == 503 and caught.value.mark_down is False
    finally:
        knobs(emulators, mode, tpot_ms=0)
        await holder


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("fault", "status", "mark_down"), [
    ("http_500", 502, False), ("http_503", 503, False), ("http_429", 503, False), ("refuse", 503, True)])
async def test_failures_before_the_answer(emulators: Any, upstream: AiohttpUpstream, mode: str, fault: str,
                                          status: int, mark_down: bool) -> None:
    backend = make(emulators, upstream, mode)
    knobs(emulators, mode, fault=fault)
    for call in (backend.chat, backend.stream_chat):
        with pytest.raises(BackendUnavailable) as caught:
            await call({"model": "x", "messages": MESSAGES})
        assert caught.value.status == status and caught.value.mark_down is mark_down


@pytest.mark.parametrize("mode", MODES)
async def test_hang_is_a_timeout(emulators: Any, upstream: AiohttpUpstream, mode: str) -> None:
    backend = make(emulators, upstream, mode, timeouts={"connect_s": 1, "first_token_s": 0.3, "total_s": 0.5})
    knobs(emulators, mode, fault="hang")
    for call in (backend.chat, backend.stream_chat):
        with pytest.raises(GatewayError) as caught:
            await call({"model": "x", "messages": MESSAGES})
        assert caught.value.status == 504 and caught.value.code == "backend_timeout"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", ["cut_stream", "malformed_chunk", "stream_error"])
async def test_broken_streams_raise_after_what_arrived(emulators: Any, upstream: AiohttpUpstream, mode: str,
                                                       fault: str) -> None:
    backend = make(emulators, upstream, mode)
    knobs(emulators, mode, fault=fault, fault_after_tokens=2)
    chunks, raw, failure = await drain(await backend.stream_chat({"model": "x", "messages": MESSAGES,
                                                                  "stream": True}))
    assert failure is not None and failure.status == 502 and failure.code == "backend_error"
    assert b"[DONE]" not in raw
    assert text_of(chunks) == "Hello from"  # the two tokens before the fault reached the client
    with pytest.raises(GatewayError) as caught:  # a non-streaming answer broken the same way
        await backend.chat({"model": "x", "messages": MESSAGES})
    assert caught.value.status >= 500


# -- health and load -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_health(emulators: Any, upstream: AiohttpUpstream, mode: str) -> None:
    assert await make(emulators, upstream, mode).health() is True
    from gateway_process import closed_port

    assert await make(emulators, upstream, mode, url=f"http://127.0.0.1:{closed_port()}").health() is False


@pytest.mark.parametrize("mode", MODES)
async def test_load_reports_running_and_queued(emulators: Any, upstream: AiohttpUpstream, mode: str) -> None:
    backend = make(emulators, upstream, mode)
    knobs(emulators, mode, max_concurrency=1, tpot_ms=100)
    tasks = [asyncio.create_task(backend.chat({"model": "x", "messages": MESSAGES, "max_tokens": 30}))
             for _ in range(2)]
    try:
        seen: list[Any] = []

        async def busy() -> bool:
            load = await backend.load()
            seen.append(load)
            return load.running == 1 and load.waiting == 1

        assert await wait_for_async(busy), seen[-3:]
        load = seen[-1]
        assert load.capacity == 1 and load.kv_cache_usage is not None and 0 < load.kv_cache_usage <= 1
    finally:
        knobs(emulators, mode, tpot_ms=0)
        await asyncio.gather(*tasks)


async def wait_for(predicate: Any) -> None:
    async def check() -> bool:
        return bool(predicate())

    assert await wait_for_async(check)


async def wait_for_async(predicate: Any, within_s: float = 5.0) -> bool:
    """Poll an async predicate until true or `within_s` seconds pass (bounded, never timing-asserted)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False
