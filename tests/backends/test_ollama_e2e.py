"""End to end: the official openai SDK -> a real `gateway serve` -> the ollama plugin -> the Ollama emulator."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from contract.providers.ollama import OllamaEmulatorProcess, backend_config, running_emulator
from gateway_process import GatewayProcess, assert_openai_error, sse_data, wait_until

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
# Short limits so a hanging server is a 504 in a second or two.
TIMEOUTS = {"connect_s": 2, "first_token_s": 1, "total_s": 2}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OllamaEmulatorProcess]:
    with running_emulator(tmp_path_factory.mktemp("ollama-e2e") / "emulator.log") as server:
        yield server


@pytest.fixture(scope="module")
def gateway(session_gateway_factory: Any, emulator: OllamaEmulatorProcess) -> Iterator[GatewayProcess]:
    url = emulator.url
    config = {
        "server": {"health_interval_s": 0.5},
        "backends": [
            backend_config(url, name="ollama", options={"num_ctx": 4096, "keep_alive": "5m"}, timeouts=TIMEOUTS),
            backend_config(url, name="ollama-strict", options={"num_ctx": 16, "shift": False}),
            backend_config(url, name="ollama-unpulled", model="qwen9:70b"),
            backend_config(url, name="ollama-embed", model="all-minilm"),
        ],
        "routes": [
            {"model": "ollama", "backends": ["ollama"]},
            {"model": "strict", "backends": ["ollama-strict"]},
            {"model": "unpulled", "backends": ["ollama-unpulled"]},
            {"model": "embed", "backends": ["ollama-embed"]},
        ],
    }
    process: GatewayProcess = session_gateway_factory(config, name="ollama-e2e")
    yield process
    process.stop()


@pytest.fixture
def faults(emulator: OllamaEmulatorProcess, gateway: GatewayProcess) -> Iterator[OllamaEmulatorProcess]:
    """The emulator for a fault test: knobs reset and every backend healthy again afterwards."""
    yield emulator
    emulator.knobs(fault="none", fault_after_tokens=2)
    with gateway.http(timeout=5) as http:
        assert wait_until(lambda: all(http.get("/ready").json()["backends"].values()), timeout=10)


def test_chat(gateway: GatewayProcess) -> None:
    response = gateway.client().chat.completions.with_raw_response.create(
        model="ollama", messages=MESSAGES, max_tokens=5, temperature=0)
    assert response.headers["x-gateway-backend"] == "ollama"
    completion = response.parse()
    assert completion.model == "ollama" and completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 5


def test_stream_matches_the_whole_answer(gateway: GatewayProcess) -> None:
    client = gateway.client()
    whole = client.chat.completions.create(model="ollama", messages=MESSAGES)
    text, finish, usage = "", None, None
    for chunk in client.chat.completions.create(model="ollama", messages=MESSAGES, stream=True,
                                                stream_options={"include_usage": True}):
        assert chunk.model == "ollama" and chunk.object == "chat.completion.chunk"
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert (text, finish) == (whole.choices[0].message.content, "stop")
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    with gateway.http() as http:
        raw = http.post("/v1/chat/completions", json={"model": "ollama", "messages": MESSAGES, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert sse_data(raw.content)[-1] == "[DONE]"


def test_completion_whole_and_streamed(gateway: GatewayProcess) -> None:
    client = gateway.client()
    whole = client.completions.create(model="ollama", prompt="Once upon a time", max_tokens=4)
    assert whole.choices[0].text and whole.choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="ollama", prompt="Once upon a time", max_tokens=4, stream=True) if c.choices)
    assert streamed == whole.choices[0].text


def test_embeddings_float_and_base64(gateway: GatewayProcess) -> None:
    client = gateway.client()
    decoded = client.embeddings.create(model="embed", input=["one", "two"])  # the SDK asks for base64
    floats = client.embeddings.create(model="embed", input=["one", "two"], encoding_format="float")
    assert [len(d.embedding) for d in decoded.data] == [384, 384]
    assert decoded.data[1].embedding == pytest.approx(floats.data[1].embedding, rel=1e-6)
    with gateway.http() as http:
        raw = http.post("/v1/embeddings", json={"model": "embed", "input": "one", "encoding_format": "base64",
                                                "dimensions": 8}).json()
    assert len(struct.unpack("<8f", base64.b64decode(raw["data"][0]["embedding"]))) == 8


def test_tool_calls(gateway: GatewayProcess) -> None:
    completion = gateway.client().chat.completions.create(
        model="ollama", messages=[{"role": "user", "content": "Paris"}], tools=TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city":"Paris"}')


def test_a_model_not_pulled_is_404_naming_it(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.client().chat.completions.create(model="unpulled", messages=MESSAGES)
    assert "qwen9:70b" in caught.value.message and "ollama pull" in caught.value.message
    with gateway.http() as http:
        response = http.post("/v1/chat/completions", json={"model": "unpulled", "messages": MESSAGES,
                                                            "stream": True})
    assert_openai_error(response, 404, param="model", code="model_not_found")


@pytest.mark.parametrize(("extra", "param"), [({"logit_bias": {"1": 5}}, "logit_bias"), ({"n": 2}, "n"),
                                              ({"tool_choice": "required", "tools": TOOLS}, "tool_choice")])
def test_what_ollama_cannot_honour_is_422(gateway: GatewayProcess, extra: dict[str, Any], param: str) -> None:
    with gateway.http() as http:
        response = http.post("/v1/chat/completions", json={"model": "ollama", "messages": MESSAGES, **extra})
    assert_openai_error(response, 422, param=param)


def test_ollamas_own_400_passes_through(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="strict", messages=[{"role": "user", "content": "w " * 40}])
    assert "longer than the context length" in caught.value.message


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("fault", "status"), [("http_500", 502), ("http_503", 503), ("http_429", 503),
                                               ("refuse", 503)])
def test_failures_before_the_first_byte(gateway: GatewayProcess, faults: OllamaEmulatorProcess, fault: str,
                                        status: int, stream: bool) -> None:
    faults.knobs(fault=fault)
    with gateway.http() as http:
        response = http.post("/v1/chat/completions", json={"model": "ollama", "messages": MESSAGES,
                                                            "stream": stream})
    assert_openai_error(response, status)
    if status == 503:
        assert response.headers["retry-after"]


@pytest.mark.parametrize("fault", ["cut_stream", "malformed_chunk", "stream_error"])
def test_failures_mid_stream_raise_in_the_sdk(gateway: GatewayProcess, faults: OllamaEmulatorProcess,
                                              fault: str) -> None:
    faults.knobs(fault=fault, fault_after_tokens=2)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in gateway.client().chat.completions.create(model="ollama", messages=MESSAGES, stream=True):
            received.append(chunk)
    assert len(received) == 2  # the two tokens before the fault reached the client
    with gateway.http() as http:
        raw = http.post("/v1/chat/completions", json={"model": "ollama", "messages": MESSAGES, "stream": True})
    events = sse_data(raw.content)
    assert "[DONE]" not in events and '"error"' in events[-1]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_hanging_server_is_504(gateway: GatewayProcess, faults: OllamaEmulatorProcess, stream: bool) -> None:
    faults.knobs(fault="hang")
    with gateway.http(timeout=30) as http:
        response = http.post("/v1/chat/completions", json={"model": "ollama", "messages": MESSAGES,
                                                            "stream": stream})
    assert_openai_error(response, 504, code="backend_timeout")


def test_ready_and_still_serving(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        assert http.get("/ready").json()["backends"]["ollama"] is True
    assert gateway.client().chat.completions.create(model="ollama", messages=MESSAGES).choices[0].message.content
