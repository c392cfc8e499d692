"""The TGI emulator against responses recorded from real TGI servers (plugins/tgi/fixtures).

Each fixture names its source. Most were recorded through a client that parsed the answer
into its own models (the text-generation client, the openai SDK), which adds fields with a
null value; so "same shape" means: every field the emulator sends is in the recording with the
same JSON type, and every field the recording has a value for, the emulator sends too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from contract.providers.tgi import TGIEmulatorProcess, running_emulator

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[2] / "plugins" / "tgi" / "fixtures"


def fixture(name: str) -> Any:
    data = json.loads((FIXTURES / name).read_text())
    assert data["_source"].startswith("huggingface/text-generation-inference@")
    return data


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def assert_same_shape(emulated: Any, real: Any, path: str = "$", may_differ: frozenset[str] = frozenset()) -> None:
    """`emulated` has `real`'s fields and JSON types (see the module docstring); `may_differ` are nullable."""
    nullable = path.rsplit(".", 1)[-1] in may_differ
    if real is None or (emulated is None and nullable):
        assert emulated is None or nullable, f"{path}: real is null, got {emulated!r}"
        return
    assert _type(emulated) == _type(real), f"{path}: {_type(emulated)} where the real server sends {_type(real)}"
    if isinstance(real, dict):
        for key, value in emulated.items():
            assert key in real, f"{path}.{key}: not a field the real server sends"
            assert_same_shape(value, real[key], f"{path}.{key}", may_differ)
        missing = [k for k, v in real.items() if v is not None and k not in emulated]
        assert not missing, f"{path}: the real server also sends {missing}"
    elif isinstance(real, list) and real and emulated:
        for i, item in enumerate(emulated):
            assert_same_shape(item, real[min(i, len(real) - 1)], f"{path}[{i}]", may_differ)


def sse_events(raw: bytes) -> list[bytes]:
    """Event payloads of TGI's framing, checking it byte for byte: `data:` with no space, `\\n\\n` after each."""
    assert raw.endswith(b"\n\n")
    events = raw.split(b"\n\n")[:-1]
    for event in events:
        assert event.startswith(b"data:") and not event.startswith(b"data: "), event
        assert b"\n" not in event
    return [e[len(b"data:"):] for e in events]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TGIEmulatorProcess]:
    with running_emulator(tmp_path_factory.mktemp("tgi-fixtures") / "emulator.log") as process:
        yield process


@pytest.fixture(scope="module")
def http(emulator: TGIEmulatorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, timeout=10) as client:
        yield client


# The request behind test_flash_llama_simple: `client.generate("Test request", max_new_tokens=10,
# decoder_input_details=True)`, as the text-generation client sends it to POST /.
SIMPLE_GENERATE = {"inputs": "Test request", "stream": False, "parameters": {
    "best_of": None, "details": True, "decoder_input_details": True, "do_sample": False, "max_new_tokens": 10,
    "repetition_penalty": None, "frequency_penalty": None, "return_full_text": False, "seed": None, "stop": [],
    "temperature": None, "top_k": None, "top_p": None, "truncate": None, "typical_p": None, "watermark": False,
    "top_n_tokens": None, "grammar": None}}


def test_generate_matches_a_recorded_answer(http: httpx.Client) -> None:
    real = fixture("generate_details.json")["response"]
    response = http.post("/", json=SIMPLE_GENERATE)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body, list) and len(body) == 1  # POST / wraps it "to match api-inference"
    assert_same_shape(body[0], real)
    assert body[0]["details"]["generated_tokens"] == 10 == len(body[0]["details"]["tokens"])
    native = http.post("/generate", json={k: v for k, v in SIMPLE_GENERATE.items() if k != "stream"}).json()
    assert_same_shape(native, real)
    assert int(http.post("/generate", json={"inputs": "Test request"}).headers["x-generated-tokens"]) >= 1


def test_generate_stream_matches_a_recorded_event(http: httpx.Client) -> None:
    lines = (FIXTURES / "generate_stream_event.txt").read_text().splitlines()
    assert lines[0].startswith("# source: huggingface/text-generation-inference@")
    recorded = "\n".join(line for line in lines if not line.startswith("# ")).encode() + b"\n"
    real_last = json.loads(sse_events(recorded)[-1])
    # The documented request: max_new_tokens 16, seed 42, no details.
    response = http.post("/generate_stream", json={"inputs": "What is this a picture of?",
                                                   "parameters": {"max_new_tokens": 16, "seed": 42}})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(e) for e in sse_events(response.content)]
    assert len(events) == 16 and [e["index"] for e in events] == list(range(1, 17))
    for event in events[:-1]:
        assert_same_shape(event, {**real_last, "generated_text": None})
    assert_same_shape(events[-1], real_last)
    assert events[-1]["generated_text"] == "".join(e["token"]["text"] for e in events)


def test_chat_matches_a_recorded_answer(http: httpx.Client) -> None:
    real = fixture("chat_completion.json")["response"]
    response = http.post("/v1/chat/completions", json={
        "model": "tgi", "max_tokens": 100, "seed": 1, "messages": [
            {"role": "system", "content": "Youre a helpful assistant! Answer the users question best you can."},
            {"role": "user", "content": "What is the weather like in Brooklyn, New York?"}]})
    assert response.status_code == 200
    body = response.json()
    assert_same_shape(body, real)
    assert body["id"] == "" and body["object"] == "chat.completion" and body["system_fingerprint"].endswith("-native")


def test_chat_stream_matches_recorded_chunks(http: httpx.Client) -> None:
    real = fixture("chat_stream_usage.json")["chunks"]
    response = http.post("/v1/chat/completions", json={
        "model": "tgi", "messages": [{"role": "user", "content": "Say 'OK!'"}], "stream": True, "max_tokens": 10,
        "seed": 42, "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    payloads = sse_events(response.content)
    assert payloads[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    tokens, last, usage = chunks[:-2], chunks[-2], chunks[-1]
    for chunk in tokens:
        assert_same_shape(chunk, real[0])
    assert_same_shape(last, real[-2])  # the chunk with the finish reason
    assert_same_shape(usage, real[-1])  # no choices, usage set
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(chunks) - 1


def test_error_bodies_match_the_documented_ones(emulator: TGIEmulatorProcess, http: httpx.Client) -> None:
    documented = fixture("error_bodies.json")["by_status"]
    seen: dict[str, httpx.Response] = {
        "422": http.post("/generate", json={"inputs": "x", "parameters": {"top_p": 1.5}}),
    }
    for status, fault in (("500", "http_500"), ("429", "http_429"), ("424", "stream_error"),
                          ("503 (GET /health)", "http_503")):
        emulator.knobs(fault=fault, fault_after_tokens=0)
        try:
            seen[status] = http.post("/generate", json={"inputs": "x"})
        finally:
            emulator.knobs(fault="none")
    for status, response in seen.items():
        assert response.status_code == int(status.split()[0]), (status, response.text)
        body = response.json()
        real = documented[status]
        assert set(body) == set(real) and body["error_type"] == real["error_type"]
        assert body["error"].startswith(real["error"])


def test_info_has_every_documented_field(http: httpx.Client) -> None:
    real = fixture("info.json")["response"]
    info = http.get("/info").json()
    assert set(info) == set(real)
    assert_same_shape(info, real, may_differ=frozenset({"docker_label", "sha", "model_sha"}))


def test_health_and_metrics(http: httpx.Client) -> None:
    health = http.get("/health")
    assert health.status_code == 200 and health.content == b""
    metrics = http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("tgi_queue_size", "tgi_batch_current_size", "tgi_request_count"):
        assert f"# TYPE {name} " in metrics.text and any(line.startswith(name + " ") for line in
                                                          metrics.text.splitlines())


async def test_the_plugins_completion_has_the_shape_of_tgis_own(emulator: TGIEmulatorProcess) -> None:
    """The plugin rebuilds /v1/completions from /generate: it answers like TGI's own OpenAI route does."""
    from gateway.backend import BackendContext
    from gateway.config import BackendConfig
    from gateway.upstream.aiohttp_client import AiohttpUpstream
    from plugins.tgi.backend import TGIBackend

    real = fixture("completion.json")["response"]
    upstream = AiohttpUpstream()
    backend = TGIBackend(BackendConfig(name="tgi", plugin="tgi", model="tgi", url=emulator.url),
                         BackendContext(upstream=upstream))
    try:
        await backend.start()
        body = json.loads(await backend.completion({"model": "tgi", "prompt": "What is Deep Learning?",
                                                    "max_tokens": 10, "temperature": 0.0}))
    finally:
        await upstream.aclose()
    assert_same_shape(body, real)
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 10, "total_tokens": 14}
