"""One contract, every backend: the same client-visible behaviour through the gateway.

Each module in `providers/` starts one server (real where it runs here: llama.cpp, vLLM;
an emulator otherwise) and says which features it has. Every test below runs once per
provider, through a real `gateway serve` process, with the official openai SDK as client.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import httpx
import openai
import pytest
from gateway_process import GatewayProcess, assert_openai_error, sse_data, wait_until

from contract import providers
from contract.providers.base import Provided

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Say hello in five words."}]


def _provider_modules() -> list[ModuleType]:
    names = sorted(m.name for m in pkgutil.iter_modules(providers.__path__) if m.name != "base")
    return [importlib.import_module(f"contract.providers.{name}") for name in names]


PROVIDERS = _provider_modules()


@dataclass
class Target:
    """A started provider behind its own gateway."""

    module: ModuleType
    provided: Provided
    gateway: GatewayProcess

    @property
    def features(self) -> frozenset[str]:
        return frozenset(self.module.FEATURES)

    def needs(self, feature: str) -> None:
        if feature not in self.features:
            pytest.skip(f"{self.module.NAME} has no {feature}")

    def knobs(self, **changes: Any) -> None:
        assert self.provided.knobs_url is not None
        response = httpx.post(self.provided.knobs_url, json=changes, timeout=10)
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module", params=PROVIDERS, ids=[m.NAME for m in PROVIDERS])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           session_gateway_factory: Any) -> Iterator[Target]:
    module: ModuleType = request.param
    with module.start(tmp_path_factory.mktemp(module.NAME)) as provided:
        backend = dict(provided.backend)
        # Short limits so the hang fault is seen as a 504 quickly.
        backend["timeouts"] = {"connect_s": 2, "first_token_s": 60, "total_s": 120, **backend.get("timeouts", {})}
        config = {
            "server": {"health_interval_s": 0.5},
            "backends": [backend],
            "routes": [{"model": provided.model, "backends": [backend["name"]]}],
        }
        gateway = session_gateway_factory(config, name=f"contract-{module.NAME}", timeout=120)
        yield Target(module, provided, gateway)
        gateway.stop()


def _reset(target: Target) -> None:
    if target.provided.knobs_url is None:
        return
    target.knobs(fault="none", ttft_ms=0, tpot_ms=0, retry_after_s=1)
    # A refused connection marks the backend down until its next health check (every 0.5 s here).
    with target.gateway.http() as http:
        assert wait_until(lambda: http.get("/ready").status_code == 200, timeout=15), "backend never came back"


@pytest.fixture
def clean_knobs(target: Target) -> Iterator[None]:
    _reset(target)
    yield
    _reset(target)


def test_chat(target: Target) -> None:
    target.needs("chat")
    response = target.gateway.client().chat.completions.with_raw_response.create(
        model=target.provided.model, messages=MESSAGES, max_tokens=8, temperature=0)
    assert response.status_code == 200
    assert response.headers["x-gateway-backend"] == target.provided.backend["name"]
    completion = response.parse()
    assert completion.model == target.provided.model
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and usage.completion_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_matches_non_stream(target: Target) -> None:
    target.needs("stream")
    client = target.gateway.client()
    whole = client.chat.completions.create(model=target.provided.model, messages=MESSAGES, max_tokens=8, temperature=0)
    text, usage, finish = "", None, None
    for chunk in client.chat.completions.create(
            model=target.provided.model, messages=MESSAGES, max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True}):
        assert chunk.model == target.provided.model
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_stream_framing(target: Target) -> None:
    target.needs("stream")
    with target.gateway.http() as http:
        response = http.post("/v1/chat/completions", json={
            "model": target.provided.model, "messages": MESSAGES, "max_tokens": 4, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_data(response.content)
    assert events[-1] == "[DONE]" and len(events) >= 2


def test_completion(target: Target) -> None:
    target.needs("completion")
    result = target.gateway.client().completions.create(
        model=target.provided.model, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert result.model == target.provided.model
    assert result.choices[0].text
    assert result.usage is not None and result.usage.completion_tokens >= 1


def test_embeddings_or_a_clear_refusal(target: Target) -> None:
    client = target.gateway.client()
    if "embeddings" in target.features:
        result = client.embeddings.create(model=target.provided.model, input=["one", "two"])
        assert len(result.data) == 2 and len(result.data[0].embedding) == len(result.data[1].embedding) > 0
    else:
        with pytest.raises(openai.UnprocessableEntityError):
            client.embeddings.create(model=target.provided.model, input="one")


def test_unknown_parameter_is_refused_by_name(target: Target) -> None:
    with target.gateway.http() as http:
        response = http.post("/v1/chat/completions", json={
            "model": target.provided.model, "messages": MESSAGES, "max_tokens": 2, "frobnicate": 1})
    assert_openai_error(response, 422, param="frobnicate", code="unsupported_parameter")


def test_health_and_ready(target: Target) -> None:
    with target.gateway.http() as http:
        ready = http.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["backends"] == {target.provided.backend["name"]: True}


async def test_load_signal(target: Target) -> None:
    """The plugin itself reads the server's load: numbers where the server reports them."""
    from gateway.backend import BackendContext, BackendLoad
    from gateway.config import parse_config
    from gateway.plugins import load_backend_registry
    from gateway.upstream.aiohttp_client import AiohttpUpstream

    # Some servers report load only once they have run something (trtllm-serve's iteration stats).
    target.gateway.client().chat.completions.create(model=target.provided.model, messages=MESSAGES, max_tokens=2)
    registry = load_backend_registry()
    config = parse_config(target.gateway.config, env={}, validators=registry.validators())
    upstream = AiohttpUpstream()
    backend = registry.types[config.backends[0].plugin](config.backends[0], BackendContext(upstream=upstream))
    try:
        assert await backend.health() is True
        load = await backend.load()
    finally:
        await upstream.aclose()
    assert isinstance(load, BackendLoad)
    reported = [v for v in (load.running, load.waiting, load.kv_cache_usage, load.capacity) if v is not None]
    assert reported, f"{target.module.NAME} reports no load at all"
    assert all(v >= 0 for v in reported)


@pytest.mark.usefixtures("clean_knobs")
@pytest.mark.parametrize(("fault", "status"), [("http_500", 502), ("http_503", 503), ("http_429", 503),
                                               ("refuse", 503)])
def test_failure_before_the_first_byte(target: Target, fault: str, status: int) -> None:
    target.needs("faults")
    # A wait longer than the route's retries.max_retry_after_s (2 s): passed on, not slept.
    target.knobs(fault=fault, retry_after_s=3)
    with target.gateway.http() as http:
        response = http.post("/v1/chat/completions", json={
            "model": target.provided.model, "messages": MESSAGES, "max_tokens": 4})
    assert_openai_error(response, status)
    if fault == "http_429":
        assert response.headers["retry-after"] == "3"  # the server's own wait, passed on
        # The gateway honours it for every request until it has passed: let it pass.
        time.sleep(3)


@pytest.mark.usefixtures("clean_knobs")
@pytest.mark.parametrize("fault", ["cut_stream", "malformed_chunk"])
def test_failure_mid_stream_is_an_error_not_a_silent_end(target: Target, fault: str) -> None:
    target.needs("faults")
    target.knobs(fault=fault, fault_after_tokens=2)
    with pytest.raises(openai.APIError):
        for _ in target.gateway.client().chat.completions.create(
                model=target.provided.model, messages=MESSAGES, max_tokens=8, stream=True):
            pass
    with target.gateway.http() as http:
        raw = http.post("/v1/chat/completions", json={
            "model": target.provided.model, "messages": MESSAGES, "max_tokens": 8, "stream": True}).content
    events = sse_data(raw)
    assert "[DONE]" not in events and '"error"' in events[-1]


def test_the_gateway_still_serves_after_the_faults(target: Target) -> None:
    _reset(target)
    completion = target.gateway.client().chat.completions.create(
        model=target.provided.model, messages=MESSAGES, max_tokens=2)
    assert completion.choices[0].message.content is not None
