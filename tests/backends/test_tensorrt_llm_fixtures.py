"""The emulators against recorded real responses (plugins/tensorrt_llm/fixtures): same fields, types, framing.

Each fixture's request is replayed against the emulator of its server; the emulator's answer
must have the fixture's status, content type and every field with the same JSON type. The
reply text differs (the fake model), the wire format must not.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from plugins.tensorrt_llm.emulator.inprocess import RunningEmulator, running_emulator

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[2] / "plugins" / "tensorrt_llm" / "fixtures"
# Outputs a generate response has only on request, or only with an id: not in every fixture.
OPTIONAL_TRITON = {"id", "num_input_tokens", "num_output_tokens"}


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    assert data["_source"], f"{name} does not name its source"
    return data


def shape(value: Any) -> Any:
    """The JSON type structure of a value: what must match, whatever the text."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def assert_same_fields(real: dict[str, Any], emulated: dict[str, Any], *, exact: bool, optional: set[str]) -> None:
    """Every real field is emulated with the same type; with `exact`, and nothing else."""
    for key, value in real.items():
        assert key in emulated, f"emulator lacks field {key!r}"
        if isinstance(value, dict):
            assert isinstance(emulated[key], dict), key
            assert_same_fields(value, emulated[key], exact=exact, optional=set())
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            assert_same_fields(value[0], emulated[key][0], exact=exact, optional=set())
        elif value is not None:
            assert shape(emulated[key]) == shape(value), (key, emulated[key], value)
    if exact:
        assert set(emulated) - set(real) <= optional, set(emulated) - set(real)


@pytest_asyncio.fixture(scope="module")
async def emulators() -> AsyncIterator[dict[str, RunningEmulator]]:
    async with running_emulator("triton") as triton, running_emulator("trtllm_serve") as serve:
        yield {"triton": triton, "trtllm_serve": serve}


@pytest_asyncio.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, base: str, endpoint: str, body: Any = None) -> tuple[int, str, bytes]:
    method, path = endpoint.split(" ", 1)
    path = path.replace(":8002", "")  # the emulator serves Triton's metrics on its one port
    async with http.request(method, base + path, json=body) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


# -- Triton ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["triton_generate_llama.json", "triton_generate_stop_words.json",
                                  "triton_generate_gemma.json"])
async def test_triton_generate_matches(emulators: Any, http: aiohttp.ClientSession, name: str) -> None:
    real = fixture(name)
    request = real.get("request") or {"text_input": "What is machine learning?", "max_tokens": 20}
    status, content_type, body = await call(http, emulators["triton"].url, real["endpoint"], request)
    assert status == real["status"] and content_type == "application/json"
    assert_same_fields(real["response"], json.loads(body), exact=False, optional=OPTIONAL_TRITON)
    if name == "triton_generate_stop_words.json":
        # Like the recorded answer ("...computers to learn"), a matched stop word stays at the end.
        _, _, body = await call(http, emulators["triton"].url, real["endpoint"],
                                {**request, "stop_words": ["focuses", "reply"], "exclude_input_in_output": True})
        assert json.loads(body)["text_output"] == "Hello from the emulator. This reply"


async def test_triton_generate_stream_matches_field_for_field(emulators: Any, http: aiohttp.ClientSession) -> None:
    real = fixture("triton_generate_stream_multimodal.json")
    status, content_type, body = await call(http, emulators["triton"].url, real["endpoint"], real["request"])
    assert status == real["status"] and content_type == real["content_type"]
    # Framing: `data: <json>\n\n` events and nothing else, no end marker.
    assert re.fullmatch(rb"(data: \{[^\n]*\}\n\n)+", body), body
    real_event = json.loads(real["sse"].removeprefix("data: "))
    events = [json.loads(line[6:]) for line in body.split(b"\n") if line]
    assert len(events) == 1  # "stream": false in the request: one response
    assert_same_fields(real_event, events[0], exact=True, optional=OPTIONAL_TRITON)
    assert events[0]["id"] == "42"  # the request's id comes back
    assert list(events[0]) == sorted(events[0])  # Triton writes keys in std::map order


async def test_triton_streamed_events_have_the_same_fields(emulators: Any, http: aiohttp.ClientSession) -> None:
    real_event = json.loads(fixture("triton_generate_stream_multimodal.json")["sse"].removeprefix("data: "))
    request = {"text_input": "Hi", "max_tokens": 3, "stream": True, "exclude_input_in_output": True}
    status, content_type, body = await call(http, emulators["triton"].url,
                                            "POST /v2/models/ensemble/generate_stream", request)
    assert status == 200 and content_type.startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in body.split(b"\n") if line]
    assert [e["text_output"] for e in events] == ["Hello", " from", " the"]
    for event in events:
        assert set(event) == set(real_event) - {"id"}
        assert event["output_log_probs"] == 0.0  # a one-token tensor is a scalar, like cum_log_probs


async def test_triton_errors_match(emulators: Any, http: aiohttp.ClientSession) -> None:
    real = fixture("triton_error.json")["examples"]
    status, content_type, body = await call(http, emulators["triton"].url, "POST /v2/models/ensemble/generate",
                                            {"text_input": 42, "max_tokens": 1})
    assert (status, content_type) == (real[0]["status"], real[0]["content_type"])
    assert shape(json.loads(body)) == shape(real[0]["body"])
    status, content_type, body = await call(http, emulators["triton"].url, "POST /v2/models/foo/generate",
                                            {"text_input": "x", "max_tokens": 1})
    assert (status, content_type) == (real[1]["status"], real[1]["content_type"])
    assert json.loads(body) == real[1]["body"]


def _series(text: str) -> dict[str, set[frozenset[str]]]:
    """Metric name -> the label-key sets of its samples."""
    found: dict[str, set[frozenset[str]]] = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+)\{([^}]*)\} \S+$", line)
        if match:
            keys = frozenset(re.findall(r'(\w+)="', match.group(2)))
            found.setdefault(match.group(1), set()).add(keys)
    return found


async def test_triton_metrics_match(emulators: Any, http: aiohttp.ClientSession) -> None:
    real = fixture("triton_metrics.json")
    status, content_type, body = await call(http, emulators["triton"].url, real["endpoint"])
    assert status == 200 and content_type == real["content_type"]
    real_series, emulated = _series(real["text"]), _series(body.decode())
    for name in ("nv_trt_llm_request_metrics", "nv_trt_llm_kv_cache_block_metrics",
                 "nv_inference_pending_request_count", "nv_inference_request_success", "nv_inference_exec_count"):
        assert emulated.get(name) == real_series[name], name
    for kind in ("active", "scheduled", "max", "waiting"):
        assert f'request_type="{kind}"' in body.decode()


# -- trtllm-serve ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["trtllm_serve_chat.json", "trtllm_serve_completion.json"])
async def test_trtllm_serve_responses_match_field_for_field(emulators: Any, http: aiohttp.ClientSession,
                                                            name: str) -> None:
    real = fixture(name)
    status, content_type, body = await call(http, emulators["trtllm_serve"].url, real["endpoint"], real["request"])
    assert status == real["status"] and content_type == "application/json"
    emulated = json.loads(body)
    assert_same_fields(real["response"], emulated, exact=True, optional=set())
    assert emulated["model"] == real["request"]["model"]  # the request's model name comes back
    assert emulated["id"].startswith(real["response"]["id"].split("-")[0] + "-")


async def test_trtllm_serve_metrics_match(emulators: Any, http: aiohttp.ClientSession) -> None:
    real = fixture("trtllm_serve_metrics.json")
    base = emulators["trtllm_serve"].url
    await call(http, base, real["endpoint"])  # drain what earlier tests left
    await call(http, base, "POST /v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 2})
    status, _, body = await call(http, base, real["endpoint"])
    stats = json.loads(body)
    assert status == 200 and len(stats) == 2  # one entry per iteration since the last read
    for entry in stats:
        assert_same_fields(real["response"][0], entry, exact=False, optional=set())
    _, _, again = await call(http, base, real["endpoint"])
    assert json.loads(again) == []  # read once, then gone


async def test_trtllm_serve_stream_framing(emulators: Any, http: aiohttp.ClientSession) -> None:
    """No recorded trtllm-serve stream was found; this follows the format strings in
    NVIDIA/TensorRT-LLM tensorrt_llm/serve/postprocess_handlers.py and openai_server.py."""
    status, content_type, body = await call(http, emulators["trtllm_serve"].url, "POST /v1/chat/completions", {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True,
        "stream_options": {"include_usage": True}})
    assert status == 200 and content_type == "text/event-stream; charset=utf-8"
    events = body.split(b"\n\n")[:-1]
    assert events[0].startswith(b"data: {") and events[0].endswith(b"} ")  # yield_first_chat: "data: {..} \n\n"
    assert json.loads(events[0][6:])["choices"][0]["delta"] == {"role": "assistant"}
    deltas = [json.loads(e[6:])["choices"][0] for e in events[1:3]]
    assert [d["delta"]["content"] for d in deltas] == ["Hello", " from"]
    assert "finish_reason" not in deltas[0] and deltas[1]["finish_reason"] == "length"  # exclude_none
    usage = json.loads(events[3][6:])
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert events[4] == b"data: [DONE]"


@pytest.mark.parametrize(("body", "fragment"), [
    ({"model": "m", "messages": [], "frob": 1}, "extra_forbidden"),
    ({"model": "m"}, "'missing'"),
    ({"model": "m", "messages": [], "stream_options": {"include_usage": True}}, "only be defined when stream"),
])
async def test_trtllm_serve_validation_errors(emulators: Any, http: aiohttp.ClientSession, body: dict[str, Any],
                                              fragment: str) -> None:
    """openai_server.py validation_exception_handler: 400 `{"error": str(exc)}`."""
    status, content_type, raw = await call(http, emulators["trtllm_serve"].url, "POST /v1/chat/completions", body)
    assert status == 400 and content_type == "application/json"
    error = json.loads(raw)
    assert set(error) == {"error"} and fragment in error["error"]
