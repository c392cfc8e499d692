"""End to end: the official openai SDK through a real `gateway serve` to each TensorRT-LLM emulator.

Both emulators run as child processes; one gateway fronts them, each under two routes: the
plain one and `<mode>_hang`, whose short time limits turn the `hang` fault into a 504 quickly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from contract.providers.tensorrt_llm import backend_block, emulator
from gateway_process import EmulatorProcess, GatewayProcess, assert_openai_error, sse_data, wait_until

pytestmark = pytest.mark.integration

MODES = ["triton", "trtllm_serve"]
MESSAGES = [{"role": "user", "content": "Say hello"}]
NORMAL = {"connect_s": 2, "first_token_s": 10, "total_s": 20}
SHORT = {"connect_s": 2, "first_token_s": 1, "total_s": 1.5}


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, EmulatorProcess]]:
    tmp: Path = tmp_path_factory.mktemp("trt-emulators")
    with emulator("triton", tmp) as triton, emulator("trtllm_serve", tmp) as serve:
        yield {"triton": triton, "trtllm_serve": serve}


@pytest.fixture(scope="module")
def gateway(emulators: dict[str, EmulatorProcess], session_gateway_factory: Any) -> Iterator[GatewayProcess]:
    backends = []
    for mode, emulated in emulators.items():
        backends.append({**backend_block(mode, emulated.url, mode), "timeouts": NORMAL})
        backends.append({**backend_block(f"{mode}_hang", emulated.url, mode), "timeouts": SHORT})
    config = {"server": {"health_interval_s": 0.5}, "backends": backends,
              "routes": [{"model": b["name"], "backends": [b["name"]]} for b in backends]}
    process: GatewayProcess = session_gateway_factory(config, name="trt-gateway")
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def clean_knobs(emulators: dict[str, EmulatorProcess]) -> Iterator[None]:
    yield
    for process in emulators.values():
        set_knobs(process, fault="none", ttft_ms=0, tpot_ms=0)


def set_knobs(process: EmulatorProcess, **changes: Any) -> None:
    process.knobs(**changes)


def post(gateway: GatewayProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    with gateway.http(timeout=30) as http:
        return http.post(path, json=body)


def serves_again(gateway: GatewayProcess) -> None:
    """After a refused connection marks a backend down, the next health check brings it back."""
    def ready() -> bool:
        with gateway.http(timeout=5) as http:
            return all(http.get("/ready").json()["backends"].values())

    assert wait_until(ready, timeout=10)


# -- traffic ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_sdk_chat_and_stream(gateway: GatewayProcess, mode: str) -> None:
    client = gateway.client()
    whole = client.chat.completions.with_raw_response.create(model=mode, messages=MESSAGES, max_tokens=5)
    assert whole.headers["x-gateway-backend"] == mode
    completion = whole.parse()
    assert completion.model == mode and completion.choices[0].message.content == "Hello from the emulator. This"
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 5
    text, finish, usage = "", None, None
    for chunk in client.chat.completions.create(model=mode, messages=MESSAGES, max_tokens=5, stream=True,
                                                stream_options={"include_usage": True}):
        assert chunk.model == mode
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert (text, finish) == (completion.choices[0].message.content, "length")
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert usage is not None and [getattr(usage, k) for k in counts] == [getattr(completion.usage, k) for k in counts]


@pytest.mark.parametrize("mode", MODES)
def test_sdk_completion_and_stream(gateway: GatewayProcess, mode: str) -> None:
    client = gateway.client()
    result = client.completions.create(model=mode, prompt="Once upon a time", max_tokens=3, stop=["never"])
    assert result.object == "text_completion" and result.choices[0].text == "Hello from the"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=mode, prompt="Once upon a time", max_tokens=3, stream=True) if c.choices)
    assert streamed == "Hello from the"


@pytest.mark.parametrize("mode", MODES)
def test_a_parameter_the_backend_cannot_honour_is_422(gateway: GatewayProcess, mode: str) -> None:
    response = post(gateway, "/v1/chat/completions", {"model": mode, "messages": MESSAGES, "frobnicate": 1})
    assert_openai_error(response, 422, param="frobnicate", code="unsupported_parameter")
    if mode == "triton":  # logprobs have no token strings to come from in the ensemble's output
        response = post(gateway, "/v1/chat/completions", {"model": mode, "messages": MESSAGES, "logprobs": True})
        assert_openai_error(response, 422, param="logprobs")


@pytest.mark.parametrize("mode", MODES)
def test_bad_parameter_passes_the_server_message(gateway: GatewayProcess, mode: str) -> None:
    body: dict[str, Any] = {"model": mode, "messages": MESSAGES}
    body.update({"max_tokens": 5000} if mode == "trtllm_serve" else {"top_k": "five"})
    error = assert_openai_error(post(gateway, "/v1/chat/completions", body), 400)
    assert ("max_seq_len" if mode == "trtllm_serve" else "non-signed-integer") in error["message"]


# -- faults ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("fault", "status"), [("http_500", 502), ("http_503", 503), ("http_429", 503),
                                               ("refuse", 503)])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_failure_before_the_first_byte(gateway: GatewayProcess, emulators: dict[str, EmulatorProcess], mode: str,
                                       fault: str, status: int, stream: bool) -> None:
    set_knobs(emulators[mode], fault=fault)
    try:
        response = post(gateway, "/v1/chat/completions", {"model": mode, "messages": MESSAGES, "stream": stream})
        assert_openai_error(response, status)
        with pytest.raises(openai.APIStatusError) as caught:
            gateway.client().chat.completions.create(model=mode, messages=MESSAGES, stream=stream)
        assert caught.value.status_code == status
    finally:
        set_knobs(emulators[mode], fault="none")
        if fault == "refuse":
            serves_again(gateway)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", ["cut_stream", "malformed_chunk", "stream_error"])
def test_failure_mid_stream_is_an_error_event(gateway: GatewayProcess, emulators: dict[str, EmulatorProcess], mode: str,
                                              fault: str) -> None:
    set_knobs(emulators[mode], fault=fault, fault_after_tokens=2)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in gateway.client().chat.completions.create(model=mode, messages=MESSAGES, stream=True):
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(received) == "Hello from"
    response = post(gateway, "/v1/chat/completions", {"model": mode, "messages": MESSAGES, "stream": True})
    assert response.status_code == 200
    events = sse_data(response.content)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["code"] == "backend_error" and mode in error["message"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_hang_is_504(gateway: GatewayProcess, emulators: dict[str, EmulatorProcess], mode: str, stream: bool) -> None:
    set_knobs(emulators[mode], fault="hang")
    response = post(gateway, "/v1/chat/completions", {"model": f"{mode}_hang", "messages": MESSAGES,
                                                      "stream": stream})
    error = assert_openai_error(response, 504, code="backend_timeout")
    assert f"{mode}_hang" in error["message"]
