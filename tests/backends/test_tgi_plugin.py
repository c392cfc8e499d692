"""The TGI plugin in-process against the TGI emulator: every Backend method and every error class."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from contract.providers.tgi import MODEL_ID, TGIEmulatorProcess, running_emulator
from gateway_process import closed_port

from gateway.backend import Backend, BackendContext, BackendUnavailable
from gateway.config import BackendConfig, TimeoutsConfig
from gateway.errors import GatewayError
from gateway.upstream.aiohttp_client import AiohttpUpstream
from plugins.tgi.backend import TGIBackend

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Say hello"}]
REPLY = "Hello from the emulator. This reply is deterministic and repeats on demand."
# Small limits so over-long prompts are cheap to build.
LIMITS = ["--max-input-tokens", "64", "--max-total-tokens", "96"]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TGIEmulatorProcess]:
    with running_emulator(tmp_path_factory.mktemp("tgi") / "emulator.log", extra=LIMITS) as process:
        yield process


@pytest.fixture(autouse=True)
def clean_knobs(emulator: TGIEmulatorProcess) -> Iterator[None]:
    emulator.knobs(fault="none", ttft_ms=0, tpot_ms=0, max_concurrency=0, max_queue=64)
    yield
    emulator.knobs(fault="none", ttft_ms=0, tpot_ms=0, max_concurrency=0, max_queue=64)


def make_backend(url: str, upstream: AiohttpUpstream, **extra: Any) -> TGIBackend:
    timeouts = extra.pop("timeouts", {"connect_s": 2, "first_token_s": 20, "total_s": 30})
    config = BackendConfig(name="tgi", plugin="tgi", model="my-model", url=url,
                           timeouts=msgspec.convert(timeouts, TimeoutsConfig), **extra)
    return TGIBackend(config, BackendContext(upstream=upstream))


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[AiohttpUpstream]:
    client = AiohttpUpstream()
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
async def backend(emulator: TGIEmulatorProcess, upstream: AiohttpUpstream) -> TGIBackend:
    tgi = make_backend(emulator.url, upstream)
    await tgi.start()
    return tgi


async def collect(stream: Any) -> bytes:
    try:
        return b"".join([events async for events in stream])
    finally:
        await stream.aclose()


def chunks(raw: bytes) -> list[dict[str, Any]]:
    """The JSON events of an OpenAI SSE body, checking each is whole and it ends with [DONE]."""
    assert raw.endswith(b"data: [DONE]\n\n"), raw[-200:]
    events = raw.split(b"\n\n")[:-1]
    assert all(e.startswith(b"data: ") for e in events), raw
    return [json.loads(e[6:]) for e in events[:-1]]


# -- start-up, health, load -----------------------------------------------------------------------


async def test_it_is_a_backend_that_read_info_at_start(backend: TGIBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.info is not None and backend.info.model_id == MODEL_ID
    assert backend.limits is not None
    assert (backend.limits.max_input_tokens, backend.limits.max_total_tokens) == (64, 96)
    assert backend.capabilities.tokenize and not backend.capabilities.embeddings


async def test_health(backend: TGIBackend, upstream: AiohttpUpstream) -> None:
    assert await backend.health() is True
    dead = make_backend(f"http://127.0.0.1:{closed_port()}", upstream)
    await dead.start()  # a server that is not up yet does not stop the gateway from starting
    assert dead.info is None
    assert await dead.health() is False


async def test_load_reads_queue_and_batch_from_metrics(backend: TGIBackend, emulator: TGIEmulatorProcess) -> None:
    idle = await backend.load()
    assert (idle.running, idle.waiting, idle.capacity) == (0.0, 0.0, 128.0)  # /info's max_concurrent_requests
    emulator.knobs(max_concurrency=1, max_queue=4, ttft_ms=3000)
    tasks = [asyncio.ensure_future(backend.chat({"messages": MESSAGES, "max_tokens": 2})) for _ in range(3)]
    try:
        for _ in range(100):
            load = await backend.load()
            if (load.running, load.waiting) == (1.0, 2.0):
                break
            await asyncio.sleep(0.05)
        assert (load.running, load.waiting) == (1.0, 2.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- chat -----------------------------------------------------------------------------------------


async def test_chat(backend: TGIBackend) -> None:
    body = json.loads(await backend.chat({"model": "client", "messages": MESSAGES, "max_tokens": 4}))
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "my-model"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello from the emulator."}
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 4


async def test_chat_end_of_sequence_is_stop(backend: TGIBackend) -> None:
    body = json.loads(await backend.chat({"messages": MESSAGES}))
    assert body["choices"][0]["message"]["content"] == REPLY
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == len(REPLY.split()) + 1  # TGI counts the EOS token


async def test_chat_stream_matches_chat(backend: TGIBackend) -> None:
    whole = json.loads(await backend.chat({"messages": MESSAGES, "max_tokens": 5}))
    raw = await collect(await backend.stream_chat({"messages": MESSAGES, "max_tokens": 5, "stream": True,
                                                   "stream_options": {"include_usage": True}}))
    events = chunks(raw)
    assert len({e["id"] for e in events}) == 1 and events[0]["id"].startswith("chatcmpl-")
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == "my-model" for e in events)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"] == whole["usage"]


async def test_chat_stop_sequence_is_not_in_the_text(backend: TGIBackend) -> None:
    request = {"messages": MESSAGES, "stop": ["deterministic"], "max_tokens": 30}
    whole = json.loads(await backend.chat(request))
    assert whole["choices"][0]["message"]["content"] == "Hello from the emulator. This reply is "
    assert whole["choices"][0]["finish_reason"] == "stop"
    events = chunks(await collect(await backend.stream_chat({**request, "stream": True})))
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == \
        "Hello from the emulator. This reply is "
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


async def test_chat_logprobs(backend: TGIBackend) -> None:
    body = json.loads(await backend.chat({"messages": MESSAGES, "max_tokens": 2, "logprobs": True,
                                          "top_logprobs": 2}))
    content = body["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["Hello", " from"]
    assert all(len(c["top_logprobs"]) == 2 and c["logprob"] < 0 for c in content)


# -- completions ----------------------------------------------------------------------------------


async def test_completion_goes_through_generate(backend: TGIBackend, emulator: TGIEmulatorProcess) -> None:
    before = emulator.requests_seen()
    body = json.loads(await backend.completion({"prompt": "The capital of France is", "max_tokens": 3,
                                                "temperature": 0}))
    after = emulator.requests_seen()
    assert after["/generate"] == before.get("/generate", 0) + 1
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0] == {"index": 0, "text": "Hello from the", "logprobs": None, "finish_reason": "length"}
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


async def test_completion_stream_matches_completion(backend: TGIBackend) -> None:
    request = {"prompt": "Once upon a time", "max_tokens": 6, "stop": ["reply"]}
    whole = json.loads(await backend.completion(request))
    events = chunks(await collect(await backend.stream_completion(
        {**request, "stream": True, "stream_options": {"include_usage": True}})))
    text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    assert text == whole["choices"][0]["text"] == "Hello from the emulator. This "
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
    assert whole["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["usage"] == whole["usage"]
    assert len({e["id"] for e in events}) == 1


async def test_completion_without_a_tokenizer_reads_usage_from_the_stream(emulator: TGIEmulatorProcess,
                                                                          upstream: AiohttpUpstream) -> None:
    no_tokenizer = make_backend(emulator.url, upstream)
    await no_tokenizer.start()
    no_tokenizer._can_tokenize = False  # as after a 404 "No fast tokenizer available"
    before = emulator.requests_seen()
    body = json.loads(await no_tokenizer.completion({"prompt": "The capital of France is", "max_tokens": 3,
                                                     "stop": ["the"]}))
    after = emulator.requests_seen()
    assert after["/generate_stream"] == before.get("/generate_stream", 0) + 1
    assert after.get("/generate", 0) == before.get("/generate", 0)
    assert body["choices"][0]["text"] == "Hello from " and body["choices"][0]["finish_reason"] == "stop"
    # the emulator made "Hello", " from", " ", "the": four tokens, the stop sequence included
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


async def test_completion_logprobs_and_echo(backend: TGIBackend) -> None:
    body = json.loads(await backend.completion({"prompt": "Hi", "max_tokens": 2, "logprobs": 2}))
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["Hello", " from"] and logprobs["text_offset"] == [0, 5]
    assert all(len(top) == 2 for top in logprobs["top_logprobs"])
    echoed = json.loads(await backend.completion({"prompt": "Hi ", "max_tokens": 1, "echo": True}))
    assert echoed["choices"][0]["text"] == "Hi Hello"
    events = chunks(await collect(await backend.stream_completion(
        {"prompt": "Hi ", "max_tokens": 2, "echo": True, "logprobs": 0, "stream": True})))
    assert "".join(e["choices"][0]["text"] for e in events) == "Hi Hello from"


async def test_native_generate_passes_tgi_fields(backend: TGIBackend) -> None:
    result = await backend.generate({"inputs": "Hi", "parameters": {
        "max_new_tokens": 2, "details": True, "top_n_tokens": 2, "seed": 7, "do_sample": True,
        "grammar": {"type": "regex", "value": "[a-z]+"}}})
    assert result["details"]["seed"] == 7 and len(result["details"]["top_tokens"]) == 2
    ids = await backend.tokenize("one two three")
    assert len(ids) == 3 and all(isinstance(i, int) for i in ids)


async def test_embeddings_are_refused(backend: TGIBackend) -> None:
    with pytest.raises(GatewayError) as caught:
        await backend.embeddings({"input": "x"})
    assert caught.value.status == 422


# -- refusing over-long prompts before sending -----------------------------------------------------


async def test_long_prompt_is_refused_before_any_generation(backend: TGIBackend,
                                                           emulator: TGIEmulatorProcess) -> None:
    long_prompt = " ".join(["word"] * 80)  # 80 tokens > max_input_tokens 64
    before = emulator.requests_seen()
    for call in (backend.completion, backend.stream_completion):
        with pytest.raises(GatewayError) as caught:
            await call({"prompt": long_prompt, "max_tokens": 4})
        assert (caught.value.status, caught.value.param, caught.value.code) == (400, "prompt",
                                                                                "context_length_exceeded")
        assert "max_input_tokens of 64" in caught.value.message and "80 tokens" in caught.value.message
    for chat_call in (backend.chat, backend.stream_chat):
        with pytest.raises(GatewayError) as caught:
            await chat_call({"messages": [{"role": "user", "content": long_prompt}]})
        assert (caught.value.status, caught.value.param) == (400, "messages")
    with pytest.raises(GatewayError) as caught:
        await backend.completion({"prompt": "a b c d e f g h i j", "max_tokens": 90})  # 10 + 90 > 96
    assert (caught.value.status, caught.value.param) == (400, "max_tokens")
    assert "max_total_tokens of 96" in caught.value.message
    after = emulator.requests_seen()
    for route in ("/generate", "/generate_stream", "/v1/chat/completions"):
        assert after.get(route, 0) == before.get(route, 0), route  # nothing was sent to generate
    assert after["/tokenize"] > before.get("/tokenize", 0)  # counted by the server's own tokenizer


async def test_short_prompts_are_not_counted(backend: TGIBackend, emulator: TGIEmulatorProcess) -> None:
    before = emulator.requests_seen()
    await collect(await backend.stream_completion({"prompt": "short", "max_tokens": 2, "stream": True}))
    await backend.chat({"messages": MESSAGES, "max_tokens": 2})
    after = emulator.requests_seen()
    assert after.get("/tokenize", 0) == before.get("/tokenize", 0)
    assert after.get("/chat_tokenize", 0) == before.get("/chat_tokenize", 0)


async def test_the_server_is_the_backstop_when_the_check_is_off(emulator: TGIEmulatorProcess,
                                                                upstream: AiohttpUpstream) -> None:
    unchecked = make_backend(emulator.url, upstream, options={"check_length": False})
    await unchecked.start()
    long_prompt = " ".join(["word"] * 80)
    with pytest.raises(GatewayError) as caught:
        await unchecked.completion({"prompt": long_prompt})
    assert (caught.value.status, caught.value.code) == (400, "context_length_exceeded")
    assert "`inputs` must have less than 64 tokens. Given: 80" in caught.value.message
    stream = await unchecked.stream_chat({"messages": [{"role": "user", "content": long_prompt}]})
    with pytest.raises(GatewayError) as caught:
        await collect(stream)  # TGI answers 200 and reports it as the stream's first event
    assert (caught.value.status, caught.value.code) == (400, "context_length_exceeded")


# -- the server's errors --------------------------------------------------------------------------


async def test_validation_errors_name_the_parameter(backend: TGIBackend) -> None:
    with pytest.raises(GatewayError) as caught:
        await backend.completion({"prompt": "x", "top_k": -1})
    assert (caught.value.status, caught.value.param) == (400, "top_k")
    assert "`top_k` must be strictly positive" in caught.value.message
    with pytest.raises(GatewayError) as caught:
        await backend.chat({"messages": MESSAGES, "top_logprobs": 9, "logprobs": True})
    assert (caught.value.status, caught.value.param) == (400, "top_logprobs")
    stream = await backend.stream_completion({"prompt": "x", "stop": ["a", "b", "c", "d", "e"], "stream": True})
    with pytest.raises(GatewayError) as caught:
        await collect(stream)
    assert caught.value.status == 400 and "stop sequences" in caught.value.message


async def until_running(backend: TGIBackend, running: float) -> None:
    for _ in range(200):
        if (await backend.load()).running == running:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the emulator never had {running} requests running")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_overloaded_is_busy_not_down(backend: TGIBackend, emulator: TGIEmulatorProcess, stream: bool) -> None:
    emulator.knobs(max_concurrency=1, max_queue=0, ttft_ms=3000)
    holder = asyncio.ensure_future(backend.chat({"messages": MESSAGES, "max_tokens": 1}))
    try:
        await until_running(backend, 1.0)
        with pytest.raises(BackendUnavailable) as caught:
            if stream:  # TGI answers 200 and sends the overload as the first event
                await collect(await backend.stream_chat({"messages": MESSAGES, "stream": True}))
            else:
                await backend.chat({"messages": MESSAGES})
        assert caught.value.mark_down is False and "overloaded" in caught.value.reason
    finally:
        holder.cancel()
        with contextlib.suppress(BaseException):
            await holder


@pytest.mark.parametrize(("fault", "status", "kind"), [
    ("http_500", 502, GatewayError), ("http_503", 503, BackendUnavailable), ("http_429", 503, BackendUnavailable),
    ("refuse", 503, BackendUnavailable), ("stream_error", 502, GatewayError)])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_failures_before_the_first_token(backend: TGIBackend, emulator: TGIEmulatorProcess, fault: str,
                                               status: int, kind: type[GatewayError], stream: bool) -> None:
    emulator.knobs(fault=fault, fault_after_tokens=0)
    with pytest.raises(kind) as caught:
        if stream:
            await collect(await backend.stream_completion({"prompt": "x", "max_tokens": 4, "stream": True}))
        else:
            await backend.completion({"prompt": "x", "max_tokens": 4})
    assert caught.value.status == status
    if isinstance(caught.value, BackendUnavailable):
        assert caught.value.mark_down is (fault == "refuse")  # only an unreachable server is marked down


@pytest.mark.parametrize("fault", ["cut_stream", "malformed_chunk", "stream_error"])
@pytest.mark.parametrize("kind", ["chat", "completion"])
async def test_failures_mid_stream_raise_after_the_first_events(backend: TGIBackend, emulator: TGIEmulatorProcess,
                                                                fault: str, kind: str) -> None:
    emulator.knobs(fault=fault, fault_after_tokens=2)
    if kind == "chat":
        stream = await backend.stream_chat({"messages": MESSAGES, "stream": True})
    else:
        stream = await backend.stream_completion({"prompt": "x", "stream": True})
    received = b""
    with pytest.raises(GatewayError) as caught:
        async for events in stream:
            received += events
    await stream.aclose()
    assert caught.value.status == 502 and caught.value.code == "backend_error"
    assert received.count(b"\n\n") == 2 and b"[DONE]" not in received  # two tokens, then the failure


async def test_hang_is_a_timeout(emulator: TGIEmulatorProcess, upstream: AiohttpUpstream) -> None:
    emulator.knobs(fault="hang")
    tight = make_backend(emulator.url, upstream, timeouts={"connect_s": 1, "first_token_s": 0.5, "total_s": 0.5})
    with pytest.raises(GatewayError) as caught:
        await tight.chat({"messages": MESSAGES})
    assert caught.value.status == 504
    with pytest.raises(GatewayError) as caught:
        await tight.stream_chat({"messages": MESSAGES, "stream": True})
    assert caught.value.status == 504


def test_emulator_log_is_clean(emulator: TGIEmulatorProcess) -> None:
    """No handler of the emulator crashed along the way, other than the refuse fault's own reset."""
    tracebacks = Path(emulator.log_path).read_text().split("Traceback (most recent call last)")[1:]
    assert all("emulator fault: refuse" in t for t in tracebacks), tracebacks
