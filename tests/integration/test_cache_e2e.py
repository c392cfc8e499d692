"""The response cache end to end: gateway processes in front of vLLM emulator processes, driven by the
openai SDK and httpx, with the in-process store and with a real redis-server.

Shown here: a miss then a hit (whatever the JSON's key order), usage on a hit marked cached, tenants
kept apart, a stored stream replayed with the same chunks and answering a non-stream request (and the
other way round), a cut stream storing nothing, the request headers that steer the cache, the admin
endpoint and CLI, 50 identical requests over two gateways making one backend call, and Redis killed
mid-run without a failed request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from gateway_process import EmulatorProcess, GatewayProcess, assert_openai_error, running, sse_data, value
from redis_server import RedisServer

MODEL = "emulated"


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 12,
            "temperature": 0, **extra}


def config(emulator: EmulatorProcess, *, redis_url: str | None = None, cache: dict[str, Any] | None = None,
           route_cache: dict[str, Any] | None = None) -> dict[str, Any]:
    route: dict[str, Any] = {"model": MODEL, "backends": ["vllm"]}
    if route_cache is not None:
        route["cache"] = route_cache
    return {
        "backends": [{"name": "vllm", "plugin": "vllm", "model": MODEL, "url": emulator.url + "/v1"}],
        "routes": [route],
        "server": {"health_interval_s": 60},
        **({"redis": {"url": redis_url}} if redis_url else {}),
        **({"cache": cache} if cache else {}),
    }


@contextlib.contextmanager
def gateway(cfg: dict[str, Any], workdir: Path, name: str = "gateway") -> Iterator[GatewayProcess]:
    process = GatewayProcess(cfg, workdir, name=name)
    with running(process):
        process.wait_ready()
        yield process


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    workdir = tmp_path_factory.mktemp("cache-emulator")
    process = EmulatorProcess("plugins.vllm.emulator", workdir / "vllm.log", ["--served-model-name", MODEL],
                              name="vllm")
    with running(process):
        process.wait_ready()
        yield process


@pytest.fixture(scope="module")
def local_gateway(emulator: EmulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway on the in-process store; each test uses prompts of its own, so entries never collide."""
    with gateway(config(emulator), tmp_path_factory.mktemp("cache-gw")) as process:
        yield process


@pytest.fixture(autouse=True)
def _healthy_emulator(emulator: EmulatorProcess) -> Iterator[None]:
    emulator.knobs(fault="none", ttft_ms=0, tpot_ms=0)
    yield
    emulator.knobs(fault="none", ttft_ms=0, tpot_ms=0)


def post(gw: GatewayProcess, body: dict[str, Any] | bytes, key: str = "test-key", **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    return httpx.post(gw.url + "/v1/chat/completions", content=content, timeout=30,
                      headers={"authorization": f"Bearer {key}", "content-type": "application/json", **headers})


def test_a_repeated_request_is_a_hit_whatever_its_key_order_and_usage_says_cached(
    local_gateway: GatewayProcess, emulator: EmulatorProcess
) -> None:
    before = emulator.requests_total()
    first = post(local_gateway, chat("hit and miss"))
    assert first.status_code == 200, first.text
    assert first.headers["x-gateway-cache"] == "miss"
    reordered = (b'{ "temperature": 0.0, "max_tokens": 12,\n  "messages": [{"content": "hit and miss", '
                 b'"role": "user"}], "model": "emulated" }')
    second = post(local_gateway, reordered)
    assert second.status_code == 200, second.text
    assert second.headers["x-gateway-cache"] == "hit"
    assert second.headers["x-gateway-backend"] == "vllm"
    assert emulator.requests_total() == before + 1
    original, replayed = first.json(), second.json()
    assert replayed["choices"] == original["choices"]
    assert replayed["usage"]["prompt_tokens"] == original["usage"]["prompt_tokens"]
    assert replayed["usage"]["completion_tokens"] == original["usage"]["completion_tokens"]
    assert replayed["usage"]["cached"] is True
    assert replayed["usage"]["prompt_tokens_details"]["cached_tokens"] == original["usage"]["prompt_tokens"]
    assert "cached" not in original["usage"]
    # The openai SDK reads the hit like any answer.
    sdk = local_gateway.client()
    completion = sdk.chat.completions.create(**chat("hit and miss"))
    assert completion.choices[0].message.content == original["choices"][0]["message"]["content"]
    assert emulator.requests_total() == before + 1
    page = httpx.get(local_gateway.url + "/metrics", timeout=10).text
    assert (value(page, "gateway_cache_requests_total", route=MODEL, result="hit") or 0) >= 2


def test_tenants_never_share_entries(local_gateway: GatewayProcess, emulator: EmulatorProcess) -> None:
    before = emulator.requests_total()
    assert post(local_gateway, chat("tenant isolation"), key="alice").headers["x-gateway-cache"] == "miss"
    assert post(local_gateway, chat("tenant isolation"), key="bob").headers["x-gateway-cache"] == "miss"
    assert post(local_gateway, chat("tenant isolation"), key="alice").headers["x-gateway-cache"] == "hit"
    assert post(local_gateway, chat("tenant isolation"), key="bob").headers["x-gateway-cache"] == "hit"
    # A namespace is a cache space of its own inside the tenant's.
    namespaced = post(local_gateway, chat("tenant isolation"), key="alice", **{"x-gateway-cache-namespace": "run-2"})
    assert namespaced.headers["x-gateway-cache"] == "miss"
    assert emulator.requests_total() == before + 3


def stream_raw(gw: GatewayProcess, body: dict[str, Any], key: str = "test-key") -> tuple[httpx.Response, bytes]:
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30,
                      headers={"authorization": f"Bearer {key}"}) as response:
        raw = response.read()
    return response, raw


def test_a_stored_stream_replays_with_the_same_chunks_and_answers_either_form(
    local_gateway: GatewayProcess, emulator: EmulatorProcess
) -> None:
    emulator.knobs(tpot_ms=5)
    body = chat("stream replay", max_tokens=60)
    before = emulator.requests_total()
    first, raw_first = stream_raw(local_gateway, body)
    assert first.headers["x-gateway-cache"] == "miss"
    second, raw_second = stream_raw(local_gateway, body)
    assert second.headers["x-gateway-cache"] == "hit"
    assert second.headers["content-type"].startswith("text/event-stream")
    assert emulator.requests_total() == before + 1
    original, replayed = sse_data(raw_first), sse_data(raw_second)
    assert len(original) > 5 and original[-1] == "[DONE]"
    assert replayed == original  # the same events: content and chunk boundaries
    # The stored stream answers a non-stream request as one JSON body.
    whole = post(local_gateway, body)
    assert whole.headers["x-gateway-cache"] == "hit"
    sdk_stream = local_gateway.client().chat.completions.create(**body, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in sdk_stream if chunk.choices)
    assert whole.json()["choices"][0]["message"]["content"] == text
    assert whole.json()["choices"][0]["finish_reason"] == "stop"
    # include_usage on a replay adds the usage chunk the original stream did not have: one token per
    # content chunk, as the emulator (like vLLM) streams them.
    content_chunks = sum(1 for event in original if '"content":"' in event and '"content":""' not in event)
    with_usage = local_gateway.client().chat.completions.create(
        **body, stream=True, stream_options={"include_usage": True})
    usage_chunks = [chunk.usage for chunk in with_usage if chunk.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].completion_tokens == content_chunks
    assert emulator.requests_total() == before + 1


def test_a_stored_answer_replays_as_a_stream(local_gateway: GatewayProcess, emulator: EmulatorProcess) -> None:
    before = emulator.requests_total()
    whole = post(local_gateway, chat("body then stream", max_tokens=40))
    assert whole.headers["x-gateway-cache"] == "miss"
    chunks = list(local_gateway.client().chat.completions.create(**chat("body then stream", max_tokens=40),
                                                                stream=True))
    assert emulator.requests_total() == before + 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.json()["choices"][0]["message"]["content"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_a_cut_stream_or_an_error_leaves_nothing_stored(
    local_gateway: GatewayProcess, emulator: EmulatorProcess
) -> None:
    emulator.knobs(fault="cut_stream", fault_after_tokens=3)
    before = emulator.requests_total()
    response, raw = stream_raw(local_gateway, chat("cut stream"))
    assert response.headers["x-gateway-cache"] == "miss"
    assert b"[DONE]" not in raw and b'"error"' in raw
    emulator.knobs(fault="http_500")
    assert post(local_gateway, chat("an error")).status_code >= 500
    emulator.knobs(fault="none")
    again, raw_again = stream_raw(local_gateway, chat("cut stream"))
    assert again.headers["x-gateway-cache"] == "miss" and raw_again.endswith(b"data: [DONE]\n\n")
    assert post(local_gateway, chat("an error")).headers["x-gateway-cache"] == "miss"
    assert stream_raw(local_gateway, chat("cut stream"))[0].headers["x-gateway-cache"] == "hit"
    assert emulator.requests_total() >= before + 3


def test_request_headers_and_modes_steer_the_cache(local_gateway: GatewayProcess, emulator: EmulatorProcess) -> None:
    body = chat("steering")
    assert post(local_gateway, body, **{"cache-control": "no-store"}).headers["x-gateway-cache"] == "miss"
    assert post(local_gateway, body).headers["x-gateway-cache"] == "miss"  # the no-store answer was not kept
    assert post(local_gateway, body).headers["x-gateway-cache"] == "hit"
    before = emulator.requests_total()
    assert post(local_gateway, body, **{"cache-control": "no-cache"}).headers["x-gateway-cache"] == "miss"
    assert emulator.requests_total() == before + 1
    # A sampled request is not cached under the default (deterministic) mode.
    sampled = {**body, "temperature": 0.7}
    assert post(local_gateway, sampled).headers["x-gateway-cache"] == "bypass"
    assert post(local_gateway, sampled).headers["x-gateway-cache"] == "bypass"
    # A seed asks for a reproducible sample: cached.
    seeded = {**sampled, "seed": 7}
    assert post(local_gateway, seeded).headers["x-gateway-cache"] == "miss"
    assert post(local_gateway, seeded).headers["x-gateway-cache"] == "hit"
    # A TTL of 0 keeps nothing; a malformed one is a 400 naming the header.
    ttl0 = chat("ttl zero")
    assert post(local_gateway, ttl0, **{"x-gateway-cache-ttl": "0"}).headers["x-gateway-cache"] == "miss"
    assert post(local_gateway, ttl0).headers["x-gateway-cache"] == "miss"
    assert post(local_gateway, ttl0).headers["x-gateway-cache"] == "hit"
    assert_openai_error(post(local_gateway, ttl0, **{"x-gateway-cache-ttl": "soon"}), 400, param="x-gateway-cache-ttl")


def test_route_modes_ttl_and_finish_reason_length(emulator: EmulatorProcess, tmp_path: Path) -> None:
    cfg = config(emulator)
    cfg["routes"] = [
        {"model": MODEL, "backends": ["vllm"], "cache": {"mode": "always", "ttl_s": 0.5, "store_length": True}},
        {"model": "uncached", "backends": ["vllm"], "cache": {"mode": "off"}},
        {"model": "strict", "backends": ["vllm"]},
    ]
    with gateway(cfg, tmp_path) as gw:
        sampled = {**chat("always"), "temperature": 0.9}
        assert post(gw, sampled).headers["x-gateway-cache"] == "miss"
        assert post(gw, sampled).headers["x-gateway-cache"] == "hit"
        time.sleep(0.7)  # past the route's ttl_s
        assert post(gw, sampled).headers["x-gateway-cache"] == "miss"
        off = {**chat("off"), "model": "uncached"}
        assert post(gw, off).headers["x-gateway-cache"] == "bypass"
        # finish_reason "length" is stored only where the route says so (the default route does not).
        strict = {**chat("length", max_tokens=3), "model": "strict"}
        assert post(gw, strict).json()["choices"][0]["finish_reason"] == "length"
        assert post(gw, strict).headers["x-gateway-cache"] == "miss"
        complete = {**chat("length", max_tokens=60), "model": "strict"}
        assert post(gw, complete).json()["choices"][0]["finish_reason"] == "stop"
        assert post(gw, complete).headers["x-gateway-cache"] == "hit"


def test_admin_deletes_by_tenant_and_model_and_the_cli_shows_stats(
    local_gateway: GatewayProcess, emulator: EmulatorProcess
) -> None:
    for key in ("carol", "dave"):
        assert post(local_gateway, chat("admin"), key=key).status_code == 200
        assert post(local_gateway, chat("admin"), key=key).headers["x-gateway-cache"] == "hit"
    page = httpx.get(local_gateway.url + "/metrics", timeout=10).text
    assert page.count("gateway_cache_requests_total") >= 2
    carol = "key-" + hashlib.sha256(b"carol").hexdigest()[:12]  # the tenant label the metrics show
    deleted = httpx.delete(local_gateway.url + "/admin/cache", params={"tenant": carol}, timeout=10)
    assert deleted.status_code == 200 and deleted.json()["deleted"] == 1
    assert post(local_gateway, chat("admin"), key="carol").headers["x-gateway-cache"] == "miss"
    assert post(local_gateway, chat("admin"), key="dave").headers["x-gateway-cache"] == "hit"
    bad = httpx.delete(local_gateway.url + "/admin/cache", params={"route": "x"}, timeout=10)
    assert_openai_error(bad, 400, param="route")
    stats = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "cache", "stats", "--config", str(local_gateway.config_path),
         "--url", local_gateway.url + "/admin/cache"], capture_output=True, text=True, timeout=60)
    assert stats.returncode == 0, stats.stderr
    assert "in-process LRU" in stats.stdout and MODEL in stats.stdout and "hit ratio" in stats.stdout
    by_model = httpx.delete(local_gateway.url + "/admin/cache", params={"model": MODEL}, timeout=10)
    assert by_model.json()["deleted"] >= 2
    assert post(local_gateway, chat("admin"), key="dave").headers["x-gateway-cache"] == "miss"
    cleared = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "cache", "clear", "--config", str(local_gateway.config_path),
         "--url", local_gateway.url + "/admin/cache", "--model", MODEL], capture_output=True, text=True, timeout=60)
    assert cleared.returncode == 0, cleared.stderr
    # Dave's answer, stored again just above.
    assert cleared.stdout.startswith("deleted ") and not cleared.stdout.startswith("deleted 0 ")
    assert f"(model {MODEL})" in cleared.stdout
    assert post(local_gateway, chat("admin"), key="dave").headers["x-gateway-cache"] == "miss"


async def _identical_requests(gateways: list[GatewayProcess], body: dict[str, Any], count: int) -> list[str]:
    """`count` identical requests spread over `gateways`, half streamed; each one's answer text."""

    async def one(i: int) -> str:
        gw = gateways[i % len(gateways)]
        client = gw.async_client()
        try:
            if i % 2:
                stream = await client.chat.completions.create(**body, stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            completion = await client.chat.completions.create(**body)
            return completion.choices[0].message.content or ""
        finally:
            await client.close()

    return await asyncio.gather(*(one(i) for i in range(count)))


def test_fifty_identical_requests_over_two_gateways_make_one_backend_call(
    emulator: EmulatorProcess, redis_server: RedisServer, tmp_path: Path
) -> None:
    emulator.knobs(ttft_ms=800, tpot_ms=10)  # the leader is still answering when the others arrive
    cfg = config(emulator, redis_url=redis_server.url)
    with gateway(cfg, tmp_path, "gw1") as gw1, gateway(cfg, tmp_path, "gw2") as gw2:
        before = emulator.requests_total()
        texts = asyncio.run(_identical_requests([gw1, gw2], chat("fifty at once", max_tokens=20), 50))
        assert emulator.requests_total() == before + 1
        assert len(set(texts)) == 1 and texts[0]
        coalesced = sum(value(httpx.get(gw.url + "/metrics").text, "gateway_cache_requests_total", route=MODEL,
                              result="coalesced") or 0 for gw in (gw1, gw2))
        misses = sum(value(httpx.get(gw.url + "/metrics").text, "gateway_cache_requests_total", route=MODEL,
                           result="miss") or 0 for gw in (gw1, gw2))
        assert misses == 1 and coalesced >= 40  # the rest may have arrived after it was stored: hits
        # Both gateways now answer it from Redis.
        assert post(gw2, chat("fifty at once", max_tokens=20), key="test-key").headers["x-gateway-cache"] == "hit"


def test_redis_killed_mid_run_fails_no_request(emulator: EmulatorProcess, redis_server: RedisServer,
                                               tmp_path: Path) -> None:
    cfg = config(emulator, redis_url=redis_server.url)
    with gateway(cfg, tmp_path) as gw:
        client = gw.client(timeout=30)
        statuses: list[str] = []
        for i in range(40):
            if i == 20:
                redis_server.kill()
            body = chat(f"redis outage {i % 5}")
            if i % 2:
                raw = client.chat.completions.with_raw_response.create(**body)
            else:
                raw = client.chat.completions.with_raw_response.create(**body, stream=True)
            statuses.append(raw.headers["x-gateway-cache"])
            parsed = raw.parse()
            if i % 2:
                assert parsed.choices[0].message.content
            else:
                assert "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
        assert "hit" in statuses[:20]
        assert set(statuses[21:]) == {"miss"}  # served by the backend while the store is gone
        page = httpx.get(gw.url + "/metrics", timeout=10).text
        assert value(page, "gateway_cache_store_up") == 0
        assert "response cache at" in gw.log_text() and "unavailable" in gw.log_text()
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(**{**chat("x"), "messages": []})  # and bad input is still a 400
