"""The llamacpp plugin's native API against the real llama.cpp server: tokens, slots, load."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from gateway_process import LlamaServer

from gateway.backend import BackendContext
from gateway.config import BackendConfig
from gateway.upstream.aiohttp_client import AiohttpUpstream
from plugins.llamacpp.backend import LlamaCppBackend

pytestmark = pytest.mark.integration


@pytest.fixture
async def backend(llama_server: LlamaServer) -> AsyncIterator[LlamaCppBackend]:
    upstream = AiohttpUpstream()
    config = BackendConfig(name="native", plugin="llamacpp", model="smollm2", url=llama_server.url)
    yield LlamaCppBackend(config, BackendContext(upstream=upstream))
    await upstream.aclose()


async def test_tokenize_and_detokenize_round_trip(backend: LlamaCppBackend) -> None:
    text = "Hello, wörld! 123\n  def f(x): return x"
    tokens = await backend.tokenize(text)
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert await backend.detokenize(tokens) == text
    # add_special prepends the model's BOS where it has one, so it never yields fewer tokens.
    assert len(await backend.tokenize(text, add_special=True)) >= len(tokens)


async def test_native_completion_takes_token_ids_and_returns_probabilities(backend: LlamaCppBackend) -> None:
    prompt_ids = await backend.tokenize("The capital of France is")
    result = await backend.native_completion(
        {"prompt": prompt_ids, "n_predict": 3, "temperature": 0, "n_probs": 2, "cache_prompt": False}
    )
    assert result["tokens_predicted"] == 3
    probs = result["completion_probabilities"]
    assert len(probs) == 3
    assert all(len(step["top_logprobs"]) == 2 for step in probs)
    # Greedy: the chosen token is the most likely one at every step.
    for step in probs:
        assert step["id"] == step["top_logprobs"][0]["id"]
    assert result["content"] == "".join(step["token"] for step in probs)


async def test_health_slots_and_load(backend: LlamaCppBackend, llama_server: LlamaServer) -> None:
    assert await backend.health() is True
    slots = await backend.slots()
    assert len(slots) == 2  # the session server runs with --parallel 2
    assert {"id", "is_processing"} <= set(slots[0])
    await backend.native_completion({"prompt": "Once upon a time", "n_predict": 4, "cache_prompt": True})
    load = await backend.load()
    assert load.running is not None and load.running >= 0
    assert load.waiting is not None and load.waiting >= 0
    assert load.capacity == 2
    # The finished request's tokens stay cached in its slot, so some of the KV cache is in use.
    assert load.kv_cache_usage is not None and 0 < load.kv_cache_usage <= 1
