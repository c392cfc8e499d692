"""The vllm plugin against the REAL vLLM server (CPU build, SmolLM2-135M): traffic, native routes, load, errors.

Requests stay a few tokens long (vLLM on 2 CPU cores decodes 7-18 tok/s). Outputs are
compared only under greedy decoding in one process, one request at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from gateway_process import closed_port, sse_data
from vllm_server import BACKEND_TIMEOUTS, VLLM_MODEL, VLLMServer, vllm_server  # noqa: F401

from gateway.backend import BackendContext, BackendUnavailable
from gateway.config import BackendConfig, TimeoutsConfig
from gateway.errors import GatewayError
from gateway.upstream.aiohttp_client import AiohttpUpstream
from plugins.vllm.backend import VLLMBackend

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "Say hello."}]
# ~2100 tokens: over the server's --max-model-len 2048 however the template wraps it.
TOO_LONG = "hello " * 2100


def make_backend(url: str, upstream: AiohttpUpstream, *, model: str = VLLM_MODEL) -> VLLMBackend:
    config = BackendConfig(name="vllm-test", plugin="vllm", model=model, url=url,
                           timeouts=msgspec.convert(BACKEND_TIMEOUTS, TimeoutsConfig))
    return VLLMBackend(config, BackendContext(upstream=upstream))


@pytest.fixture
async def upstream() -> AsyncIterator[AiohttpUpstream]:
    client = AiohttpUpstream()
    yield client
    await client.aclose()


@pytest.fixture
def backend(vllm_server: VLLMServer, upstream: AiohttpUpstream) -> VLLMBackend:  # noqa: F811
    return make_backend(vllm_server.url + "/v1", upstream)


async def collect(stream: Any) -> list[dict[str, Any]]:
    raw = b"".join([events async for events in stream])
    data = sse_data(raw)
    assert data[-1] == "[DONE]", raw
    return [msgspec.json.decode(d) for d in data[:-1]]


# -- traffic --------------------------------------------------------------------------------


async def test_chat(backend: VLLMBackend) -> None:
    answer = msgspec.json.decode(await backend.chat({"messages": HI, "max_tokens": 4, "temperature": 0}))
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"].strip()
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 4


async def test_stream_chat_matches_the_non_streamed_answer(backend: VLLMBackend) -> None:
    body = {"messages": HI, "max_tokens": 4, "temperature": 0}
    whole = msgspec.json.decode(await backend.chat(dict(body)))
    chunks = await collect(await backend.stream_chat({**body, "stream": True,
                                                      "stream_options": {"include_usage": True}}))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


async def test_completion_with_a_token_id_prompt_and_prompt_logprobs(backend: VLLMBackend) -> None:
    ids = await backend.tokenize("The capital of France is")
    answer = msgspec.json.decode(await backend.completion(
        {"prompt": ids, "max_tokens": 2, "temperature": 0, "prompt_logprobs": 1}))
    choice = answer["choices"][0]
    assert answer["usage"]["prompt_tokens"] == len(ids)
    logprobs = choice["prompt_logprobs"]
    # One entry per prompt token; the first has no context to be predicted from.
    assert len(logprobs) == len(ids) and logprobs[0] is None
    for token_id, entry in zip(ids[1:], logprobs[1:], strict=True):
        actual = entry[str(token_id)]  # the prompt's own token is always reported, with its rank
        assert actual["logprob"] <= 0 and actual["rank"] >= 1
        assert len(entry) <= 2  # the actual token plus the top-1


async def test_chat_prompt_logprobs(backend: VLLMBackend) -> None:
    answer = msgspec.json.decode(await backend.chat(
        {"messages": HI, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}))
    usage, logprobs = answer["usage"], answer["prompt_logprobs"]
    assert len(logprobs) == usage["prompt_tokens"] and logprobs[0] is None


async def test_top_k_one_is_honoured_as_greedy(backend: VLLMBackend) -> None:
    """top_k=1 at temperature 1 leaves only the most likely token: the greedy answer."""
    greedy = msgspec.json.decode(await backend.completion({"prompt": "Once upon a time", "max_tokens": 4,
                                                           "temperature": 0}))
    top1 = msgspec.json.decode(await backend.completion(
        {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 1.0, "top_k": 1, "min_p": 0.05,
         "repetition_penalty": 1.0, "seed": 7}))
    assert top1["choices"][0]["text"] == greedy["choices"][0]["text"]


async def test_structured_outputs_and_legacy_guided_choice_constrain_the_answer(backend: VLLMBackend) -> None:
    for constraint in ({"structured_outputs": {"choice": ["yes", "no"]}}, {"guided_choice": ["yes", "no"]}):
        answer = msgspec.json.decode(await backend.chat(
            {"messages": [{"role": "user", "content": "Is water wet?"}], "max_tokens": 4, **constraint}))
        assert answer["choices"][0]["message"]["content"] in {"yes", "no"}, constraint


# -- native routes and load -------------------------------------------------------------------


async def test_tokenize_detokenize_round_trip(backend: VLLMBackend) -> None:
    text = "Hello, wörld! 123\n  def f(x): return x"
    tokens = await backend.tokenize(text)
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert await backend.detokenize(tokens) == text
    assert len(await backend.tokenize(text, add_special=True)) >= len(tokens)


async def test_health_and_models(backend: VLLMBackend) -> None:
    assert await backend.health() is True
    models = await backend.models()
    assert [(m.id, m.max_model_len) for m in models] == [(VLLM_MODEL, 2048)]


async def test_load_reports_a_running_request_and_then_none(backend: VLLMBackend) -> None:
    idle = await backend.load()
    assert idle.running is not None and idle.waiting is not None and idle.kv_cache_usage is not None
    assert 0 <= idle.kv_cache_usage <= 1
    stream = await backend.stream_chat({"messages": HI, "max_tokens": 300, "ignore_eos": True, "stream": True})
    seen_running = False
    try:
        async for _ in stream:  # each event is a decoding step: the request is in the batch
            load = await backend.load()
            if load.running is not None and load.running >= 1:
                seen_running = True
                assert load.kv_cache_usage is not None and load.kv_cache_usage > 0
                break
    finally:
        await stream.aclose()  # vLLM aborts a request whose client went away
    assert seen_running
    for _ in range(200):  # up to ~10 s for the abort to reach the scheduler
        if (await backend.load()).running == 0:
            break
        await asyncio.sleep(0.05)
    assert (await backend.load()).running == 0


# -- errors: vLLM's own messages, OpenAI's conventions -----------------------------------------


async def test_over_long_prompt_is_400_context_length_exceeded(backend: VLLMBackend) -> None:
    with pytest.raises(GatewayError) as caught:
        await backend.chat({"messages": [{"role": "user", "content": TOO_LONG}], "max_tokens": 2})
    err = caught.value
    assert (err.status, err.code, err.param) == (400, "context_length_exceeded", "messages")
    assert "maximum context length is 2048 tokens" in err.message
    with pytest.raises(GatewayError) as caught:  # a stream fails before its first byte, the same way
        await backend.stream_completion({"prompt": TOO_LONG, "max_tokens": 2, "stream": True})
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "context_length_exceeded", "prompt")


@pytest.mark.parametrize(("extra", "param", "says"), [
    ({"min_p": 2.0}, None, "min_p must be in [0, 1]"),
    ({"top_k": -5}, None, "top_k must be 0 (disable), or at least 1"),
    ({"temperature": -1}, "temperature", "temperature must be non-negative"),
    ({"top_k": "many"}, "top_k", "valid integer"),
])
async def test_bad_parameter_value_is_400_with_vllms_message(
    backend: VLLMBackend, extra: dict[str, Any], param: str | None, says: str
) -> None:
    with pytest.raises(GatewayError) as caught:
        await backend.chat({"messages": HI, "max_tokens": 2, **extra})
    err = caught.value
    assert (err.status, err.param, err.type) == (400, param, "invalid_request_error")
    assert says in err.message and err.message.startswith("backend 'vllm-test': ")


async def test_unknown_model_is_404_model_not_found(vllm_server: VLLMServer, upstream: AiohttpUpstream) -> None:  # noqa: F811
    misnamed = make_backend(vllm_server.url, upstream, model="no-such-model")
    for call in (misnamed.chat({"messages": HI, "max_tokens": 1}), misnamed.tokenize("x")):
        with pytest.raises(GatewayError) as caught:
            await call
        err = caught.value
        assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
        assert "The model `no-such-model` does not exist" in err.message


async def test_unreachable_server_is_unavailable_so_the_router_falls_back(upstream: AiohttpUpstream) -> None:
    dead = make_backend(f"http://127.0.0.1:{closed_port()}", upstream)
    with pytest.raises(BackendUnavailable):
        await dead.chat({"messages": HI, "max_tokens": 1})
    assert await dead.health() is False
    with pytest.raises(BackendUnavailable):
        await dead.load()
