"""End to end: the official openai SDK -> the gateway process -> llama.cpp's real C++ server (SmolLM2-135M).

Outputs are compared only under greedy decoding (temperature 0), which llama.cpp repeats
exactly. `cache_prompt: false` makes every compared request process its prompt the same way
(one batch), since llama.cpp does not promise identical logits for a prompt partly served
from its KV cache (see shared/reference/backends-on-cpu.md). Requests stay a few tokens long.
"""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pytest
from gateway_process import GatewayProcess, assert_openai_error, sse_data

pytestmark = pytest.mark.integration

SEA = [{"role": "user", "content": "Write one sentence about the sea."}]
COLORS = [{"role": "user", "content": "Name three colors."}]
SAME_PREFILL = {"cache_prompt": False}


@pytest.fixture(scope="module")
def greedy(llama_gateway: GatewayProcess) -> Any:
    """One greedy, non-streaming chat answer (max_tokens=5) with its HTTP headers, shared by the module."""
    raw = llama_gateway.client().chat.completions.with_raw_response.create(
        model="smollm2", messages=SEA, max_tokens=5, temperature=0, extra_body=SAME_PREFILL)
    return raw.status_code, raw.headers, raw.parse()


def test_chat_non_stream(greedy: Any) -> None:
    status, headers, completion = greedy
    assert status == 200
    assert completion.object == "chat.completion"
    assert completion.model == "smollm2"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert headers["x-gateway-backend"] == "llama"
    assert re.fullmatch(r"[0-9a-f]{24}", headers["x-request-id"]), headers  # generated when the client sent none
    assert headers["content-type"].startswith("application/json")


def test_max_tokens_cuts_with_finish_reason_length(greedy: Any) -> None:
    _, _, completion = greedy
    assert completion.usage.completion_tokens == 5
    assert completion.choices[0].finish_reason == "length"


def test_response_model_is_the_name_the_client_asked_for(llama_gateway: GatewayProcess) -> None:
    """llama.cpp reports its own model name; the client sees the route name it used."""
    client = llama_gateway.client()
    completion = client.chat.completions.create(model="tiny-chat", messages=COLORS, max_tokens=2, temperature=0)
    assert completion.model == "tiny-chat"
    chunks = list(client.chat.completions.create(model="tiny-chat", messages=COLORS, max_tokens=2, temperature=0,
                                                 stream=True))
    assert chunks and all(chunk.model == "tiny-chat" for chunk in chunks)


def test_request_id_is_echoed(llama_gateway: GatewayProcess) -> None:
    raw = llama_gateway.client().chat.completions.with_raw_response.create(
        model="smollm2", messages=COLORS, max_tokens=1, temperature=0,
        extra_headers={"x-request-id": "client-chosen-id-42"})
    assert raw.status_code == 200
    assert raw.headers["x-request-id"] == "client-chosen-id-42"


def test_request_id_is_echoed_on_streams_and_errors(llama_gateway: GatewayProcess) -> None:
    with llama_gateway.http() as http:
        headers = {"x-request-id": "stream-id-7"}
        with http.stream("POST", "/v1/chat/completions", headers=headers, json={
                "model": "smollm2", "messages": COLORS, "max_tokens": 1, "stream": True}) as response:
            assert response.status_code == 200
            assert response.headers["x-request-id"] == "stream-id-7"
            response.read()
        error = http.post("/v1/chat/completions", headers=headers, json={"model": "nope", "messages": COLORS})
        assert error.status_code == 404
        assert error.headers["x-request-id"] == "stream-id-7"


def test_chat_stream_matches_non_stream(llama_gateway: GatewayProcess, greedy: Any) -> None:
    _, _, completion = greedy
    stream = llama_gateway.client().chat.completions.create(
        model="smollm2", messages=SEA, max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body=SAME_PREFILL)
    chunks = list(stream)
    assert len(chunks) > 2
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    last = chunks[-1]
    assert last.usage is not None, "the last chunk carries usage when include_usage is set"
    assert last.usage.completion_tokens == completion.usage.completion_tokens == 5
    assert last.usage.prompt_tokens == completion.usage.prompt_tokens
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.object == "chat.completion.chunk" and c.model == "smollm2" for c in chunks)


def test_chat_stream_raw_sse(llama_gateway: GatewayProcess) -> None:
    with llama_gateway.http() as http, http.stream("POST", "/v1/chat/completions", json={
            "model": "smollm2", "messages": COLORS, "max_tokens": 3, "temperature": 0, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-gateway-backend"] == "llama"
        assert response.headers["x-request-id"]
        raw = response.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    events = sse_data(raw)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    for event in events[:-1]:
        chunk = json.loads(event)
        assert "error" not in chunk
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "smollm2"


def test_stop_sequence(llama_gateway: GatewayProcess) -> None:
    client = llama_gateway.client()
    full = client.chat.completions.create(model="smollm2", messages=COLORS, max_tokens=12, temperature=0,
                                          extra_body=SAME_PREFILL).choices[0].message.content
    assert full
    # A word of the greedy output that first occurs after its start: generation must stop right before it.
    stop = next(w for w in full.split()[1:] if full.index(w) > 0)
    expected = full[: full.index(stop)]
    completion = client.chat.completions.create(model="smollm2", messages=COLORS, max_tokens=12, temperature=0,
                                                stop=[stop], extra_body=SAME_PREFILL)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", (full, stop, choice)
    assert choice.message.content == expected
    assert stop not in choice.message.content


def test_chat_logprobs(llama_gateway: GatewayProcess) -> None:
    completion = llama_gateway.client().chat.completions.create(
        model="smollm2", messages=COLORS, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    tokens = choice.logprobs.content
    assert len(tokens) == completion.usage.completion_tokens
    assert "".join(t.token for t in tokens) == choice.message.content
    for token in tokens:
        assert token.logprob <= 0.0
        assert len(token.top_logprobs) == 3
        ranked = [t.logprob for t in token.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        assert token.top_logprobs[0].token == token.token  # greedy picked the most likely token


def test_seed_and_top_k_are_accepted(llama_gateway: GatewayProcess, greedy: Any) -> None:
    """top_k is a llama.cpp extra; top_k=1 makes even temperature-1 sampling pick the greedy tokens."""
    _, _, reference = greedy
    completion = llama_gateway.client().chat.completions.create(
        model="smollm2", messages=SEA, max_tokens=5, temperature=1.0, seed=1234,
        extra_body={"top_k": 1, **SAME_PREFILL})
    assert completion.choices[0].message.content == reference.choices[0].message.content


def test_n_choices(llama_gateway: GatewayProcess) -> None:
    """llama.cpp serves n > 1 (the llamacpp plugin passes it on since c2f839e): one choice per index."""
    completion = llama_gateway.client().chat.completions.create(
        model="smollm2", messages=COLORS, max_tokens=2, temperature=0, n=2, extra_body=SAME_PREFILL)
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.choices[0].message.content
    assert completion.choices[0].message.content == completion.choices[1].message.content  # greedy


def test_unknown_parameter_is_refused_naming_it(llama_gateway: GatewayProcess) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        llama_gateway.client().chat.completions.create(model="smollm2", messages=COLORS, max_tokens=1,
                                                       extra_body={"frobnication_level": 3})
    assert caught.value.body["param"] == "frobnication_level"  # type: ignore[index]
    assert "frobnication_level" in caught.value.message


# -- legacy completions ---------------------------------------------------------------------------

def test_completion_non_stream(llama_gateway: GatewayProcess) -> None:
    raw = llama_gateway.client().completions.with_raw_response.create(
        model="smollm2", prompt="The capital of France is", max_tokens=5, temperature=0)
    assert raw.headers["x-gateway-backend"] == "llama"
    completion = raw.parse()
    assert completion.model == "smollm2"
    assert completion.choices[0].text
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_completion_parameter_llamacpp_ignores_is_refused(llama_gateway: GatewayProcess) -> None:
    """llama.cpp silently ignores `echo` on /v1/completions, so the gateway refuses it with a 422 naming it."""
    with llama_gateway.http() as http:
        response = http.post("/v1/completions", json={"model": "smollm2", "prompt": "x", "max_tokens": 1,
                                                      "echo": True})
    error = assert_openai_error(response, 422, param="echo", code="unsupported_parameter")
    assert "echo" in error["message"]


def test_completion_stream_matches_non_stream(llama_gateway: GatewayProcess) -> None:
    client = llama_gateway.client()
    args: dict[str, Any] = {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 5,
                            "temperature": 0, "extra_body": SAME_PREFILL}
    full = client.completions.create(**args)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert all(c.model == "smollm2" for c in chunks)

