"""End to end: the official openai SDK -> a real `gateway serve` process -> the TGI emulator.

Each fault knob of the emulator must reach the client as the right outcome: a 5xx or a refused
connection before the first byte is a 502/503 status, an overload a 503 with Retry-After, a
stream cut or corrupted mid-way an SDK exception with no `[DONE]`, a hung server a 504.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from contract.providers.tgi import TGIEmulatorProcess, backend_config, running_emulator
from gateway_process import GatewayProcess, assert_openai_error, sse_data, wait_until

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Say hello"}]
NORMAL = {"connect_s": 2, "first_token_s": 20, "total_s": 30}
TIGHT = {"connect_s": 1, "first_token_s": 1, "total_s": 1.5}  # so a hung server is a quick 504


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TGIEmulatorProcess]:
    log = tmp_path_factory.mktemp("tgi-e2e") / "emulator.log"
    with running_emulator(log, extra=["--max-input-tokens", "64", "--max-total-tokens", "96"]) as process:
        yield process


@pytest.fixture(scope="module")
def gateway(emulator: TGIEmulatorProcess, session_gateway_factory: Any) -> Iterator[GatewayProcess]:
    config = {
        "server": {"health_interval_s": 0.5},
        "backends": [backend_config(emulator.url, name="tgi", timeouts=NORMAL),
                     backend_config(emulator.url, name="tgi_tight", timeouts=TIGHT)],
        "routes": [{"model": "tgi", "backends": ["tgi"]}, {"model": "tgi-tight", "backends": ["tgi_tight"]}],
    }
    process: GatewayProcess = session_gateway_factory(config, name="tgi-e2e")
    yield process
    process.stop()


@pytest.fixture
def knobs(emulator: TGIEmulatorProcess, gateway: GatewayProcess) -> Iterator[TGIEmulatorProcess]:
    """The emulator, with its knobs back to normal and the gateway serving again after the test."""
    yield emulator
    emulator.knobs(fault="none", ttft_ms=0, tpot_ms=0)
    client = gateway.client(timeout=5)

    def serves() -> bool:
        return bool(client.chat.completions.create(model="tgi", messages=MESSAGES, max_tokens=1).choices)

    assert wait_until(serves, timeout=10), "the gateway did not serve again after the fault was cleared"


def post_chat(gateway: GatewayProcess, **body: Any) -> Any:
    with gateway.http(timeout=30) as http:
        return http.post("/v1/chat/completions", json={"model": "tgi", "messages": MESSAGES, **body})


# -- working requests -----------------------------------------------------------------------------


def test_chat_through_the_sdk(gateway: GatewayProcess) -> None:
    response = gateway.client().chat.completions.with_raw_response.create(model="tgi", messages=MESSAGES,
                                                                          max_tokens=4, temperature=0)
    assert response.status_code == 200 and response.headers["x-gateway-backend"] == "tgi"
    completion = response.parse()
    assert completion.model == "tgi" and completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.content == "Hello from the emulator."
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 4


def test_chat_stream_through_the_sdk(gateway: GatewayProcess) -> None:
    client = gateway.client()
    whole = client.chat.completions.create(model="tgi", messages=MESSAGES, max_tokens=6, stop=["This"])
    text, finish, usage = "", None, None
    for chunk in client.chat.completions.create(model="tgi", messages=MESSAGES, max_tokens=6, stop=["This"],
                                                stream=True, stream_options={"include_usage": True}):
        assert chunk.model == "tgi"
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == whole.choices[0].message.content == "Hello from the emulator. "
    assert finish == whole.choices[0].finish_reason == "stop"
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_completions_through_the_sdk(gateway: GatewayProcess) -> None:
    client = gateway.client()
    result = client.completions.create(model="tgi", prompt="The capital of France is", max_tokens=3,
                                       temperature=0, logprobs=1)
    assert result.model == "tgi" and result.choices[0].text == "Hello from the"
    assert result.choices[0].logprobs is not None and result.choices[0].logprobs.tokens == ["Hello", " from", " the"]
    assert result.usage is not None and result.usage.prompt_tokens == 5
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tgi", prompt="The capital of France is", max_tokens=3, stream=True) if c.choices)
    assert streamed == "Hello from the"


def test_a_parameter_tgi_cannot_honour_is_refused_by_name(gateway: GatewayProcess) -> None:
    assert_openai_error(post_chat(gateway, logit_bias={"42": 1}), 422, param="logit_bias",
                        code="unsupported_parameter")
    assert_openai_error(post_chat(gateway, n=2), 422, param="n", code="unsupported_parameter")
    with pytest.raises(openai.UnprocessableEntityError):
        gateway.client().embeddings.create(model="tgi", input="x")


def test_an_over_long_prompt_is_a_400_and_never_reaches_generation(gateway: GatewayProcess,
                                                                   emulator: TGIEmulatorProcess) -> None:
    before = emulator.requests_seen()
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(
            model="tgi", messages=[{"role": "user", "content": " ".join(["word"] * 80)}], stream=True)
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "messages"
    assert "max_input_tokens of 64" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().completions.create(model="tgi", prompt="a b c d", max_tokens=200)
    assert caught.value.param == "max_tokens" and "max_total_tokens of 96" in caught.value.message
    after = emulator.requests_seen()
    for route in ("/v1/chat/completions", "/generate", "/generate_stream"):
        assert after.get(route, 0) == before.get(route, 0)


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "status"), [("http_500", 502), ("http_503", 503), ("http_429", 503),
                                               ("refuse", 503)])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_failure_before_the_first_byte_is_a_status(gateway: GatewayProcess, knobs: TGIEmulatorProcess, fault: str,
                                                   status: int, stream: bool) -> None:
    knobs.knobs(fault=fault)
    response = post_chat(gateway, max_tokens=4, stream=stream)
    assert_openai_error(response, status)
    if status == 503:
        assert response.headers.get("retry-after")
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.client().chat.completions.create(model="tgi", messages=MESSAGES, max_tokens=4, stream=stream)
    assert caught.value.status_code == status


@pytest.mark.parametrize("fault", ["cut_stream", "malformed_chunk", "stream_error"])
def test_failure_mid_stream_raises_in_the_sdk_with_no_done(gateway: GatewayProcess, knobs: TGIEmulatorProcess,
                                                          fault: str) -> None:
    knobs.knobs(fault=fault, fault_after_tokens=2)
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in gateway.client().chat.completions.create(model="tgi", messages=MESSAGES, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["Hello", " from"]
    response = post_chat(gateway, stream=True)
    assert response.status_code == 200
    events = sse_data(response.content)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["code"] == "backend_error" and "tgi" in error["message"]
    with pytest.raises(openai.APIError):
        for _ in gateway.client().completions.create(model="tgi", prompt="x", stream=True):
            pass


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_hung_server_is_a_504(gateway: GatewayProcess, knobs: TGIEmulatorProcess, stream: bool) -> None:
    knobs.knobs(fault="hang")
    with gateway.http(timeout=30) as http:
        response = http.post("/v1/chat/completions", json={"model": "tgi-tight", "messages": MESSAGES,
                                                           "stream": stream})
    assert_openai_error(response, 504, code="backend_timeout")
