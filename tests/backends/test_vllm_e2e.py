"""End to end: the official openai SDK -> a real `gateway serve` process -> the REAL vLLM server (CPU, SmolLM2-135M)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from gateway_process import GatewayProcess, assert_openai_error
from vllm_server import BACKEND_TIMEOUTS, VLLM_MODEL, VLLMServer, vllm_server  # noqa: F401

pytestmark = pytest.mark.integration

ROUTE = "smollm2-vllm"  # the client-facing name; the backend sends vLLM its served name
HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def gateway(session_gateway_factory: Any, vllm_server: VLLMServer) -> GatewayProcess:  # noqa: F811
    config = {
        "server": {"health_interval_s": 1.0},
        "backends": [{"name": "vllm", "plugin": "vllm", "model": VLLM_MODEL, "url": vllm_server.url + "/v1",
                      "timeouts": BACKEND_TIMEOUTS}],
        "routes": [{"model": ROUTE, "backends": ["vllm"]}],
    }
    process: GatewayProcess = session_gateway_factory(config, name="vllm-gateway")
    return process


def test_chat_non_streaming(gateway: GatewayProcess) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model=ROUTE, messages=HI, max_tokens=4, temperature=0)
    assert raw.status_code == 200
    assert raw.headers["x-gateway-backend"] == "vllm"
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == ROUTE
    assert completion.choices[0].message.content.strip()
    usage = completion.usage
    assert usage.completion_tokens == 4 and usage.total_tokens == usage.prompt_tokens + 4


def test_chat_streaming_with_usage_in_the_last_chunk(gateway: GatewayProcess) -> None:
    client = gateway.client()
    whole = client.chat.completions.create(model=ROUTE, messages=HI, max_tokens=4, temperature=0)
    raw = client.chat.completions.with_raw_response.create(
        model=ROUTE, messages=HI, max_tokens=4, temperature=0, stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-gateway-backend"] == "vllm"
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert all(chunk.model == ROUTE for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 4 and last.usage.prompt_tokens == whole.usage.prompt_tokens


def test_completion_with_token_ids_and_vllm_extras(
    gateway: GatewayProcess, vllm_server: VLLMServer  # noqa: F811
) -> None:
    tokenized = httpx.post(vllm_server.url + "/tokenize", json={"prompt": "Once upon a time",
                                                              "add_special_tokens": False}, timeout=30)
    ids = tokenized.json()["tokens"]
    completion = gateway.client().completions.create(
        model=ROUTE, prompt=ids, max_tokens=2, temperature=0,
        extra_body={"prompt_logprobs": 0, "top_k": 5, "min_p": 0.1})
    assert completion.model == ROUTE
    assert completion.usage.prompt_tokens == len(ids)
    prompt_logprobs = completion.choices[0].model_extra["prompt_logprobs"]
    assert len(prompt_logprobs) == len(ids) and prompt_logprobs[0] is None
    assert str(ids[1]) in prompt_logprobs[1]  # keyed by the prompt's own token id


def test_over_long_prompt_is_a_400_the_sdk_raises(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(
            model=ROUTE, messages=[{"role": "user", "content": "hello " * 2100}], max_tokens=2)
    assert caught.value.status_code == 400
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in caught.value.message


def test_bad_value_and_unsupported_parameter(gateway: GatewayProcess) -> None:
    with gateway.http() as http:
        bad = http.post("/v1/chat/completions", json={"model": ROUTE, "messages": HI, "max_tokens": 2, "min_p": 2})
        error = assert_openai_error(bad, 400)
        assert "min_p must be in [0, 1]" in error["message"]
        # vLLM 0.32 would silently ignore this field, so the gateway refuses it.
        refused = http.post("/v1/chat/completions", json={"model": ROUTE, "messages": HI, "max_tokens": 2,
                                                          "guided_decoding_backend": "xgrammar"})
        assert_openai_error(refused, 422, param="guided_decoding_backend", code="unsupported_parameter")
