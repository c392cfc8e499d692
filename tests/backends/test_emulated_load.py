"""The vllm and llamacpp plugins against their emulators: load() reads /metrics and /slots while
requests are held (ttft_ms, one slot), and a mid-stream fault the plugins must not pass on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.backend import BackendContext, BackendLoad
from gateway.config import parse_config
from gateway.errors import GatewayError
from gateway.plugins import load_backend_registry
from gateway.upstream.aiohttp_client import AiohttpUpstream
from plugins.emulation import EmulatorRuntime, Knobs
from plugins.llamacpp.emulator.app import ServerArgs
from plugins.llamacpp.emulator.app import build_app as build_llamacpp
from plugins.vllm.emulator.app import ServedModel
from plugins.vllm.emulator.app import build_app as build_vllm

MODEL = "emulated"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
PLUGINS: dict[str, tuple[Callable[[EmulatorRuntime], web.Application], str]] = {
    "vllm": (lambda runtime: build_vllm(runtime, ServedModel(name=MODEL)), "/v1"),
    "llamacpp": (lambda runtime: build_llamacpp(runtime, ServerArgs(alias=MODEL, parallel=1)), ""),
}


@asynccontextmanager
async def plugin_on_emulator(plugin: str, knobs: Knobs) -> AsyncIterator[tuple[Any, str]]:
    """(the plugin's backend, the emulator's URL) for an in-process emulator on 127.0.0.1."""
    build, suffix = PLUGINS[plugin]
    server = TestServer(build(EmulatorRuntime(knobs)), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    registry = load_backend_registry()
    config = parse_config({"backends": [{"name": plugin, "plugin": plugin, "model": MODEL, "url": url + suffix}],
                           "routes": [{"model": MODEL, "backends": [plugin]}]},
                          env={}, validators=registry.validators())
    upstream = AiohttpUpstream()
    try:
        yield registry.types[plugin](config.backends[0], BackendContext(upstream=upstream)), url
    finally:
        await upstream.aclose()
        await server.close()


async def _until(backend: Any, wanted: Callable[[BackendLoad], bool], within_s: float = 10.0) -> BackendLoad:
    """Poll load() until `wanted` holds (bounded); the last load either way."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    load = await backend.load()
    while not wanted(load) and loop.time() < deadline:
        await asyncio.sleep(0.02)
        load = await backend.load()
    return load


@pytest.mark.parametrize("plugin", ["vllm", "llamacpp"])
async def test_load_follows_requests_held_by_the_emulator(plugin: str) -> None:
    """Two requests on one slot: one running and one waiting while held, none once they finish."""
    async with plugin_on_emulator(plugin, Knobs(ttft_ms=1500, max_concurrency=1)) as (backend, url):
        idle = await backend.load()
        assert (idle.running, idle.waiting) == (0, 0)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            held = [asyncio.create_task(client.post("/v1/chat/completions", json=CHAT)) for _ in range(2)]
            busy = await _until(backend, lambda load: load.running == 1 and load.waiting == 1)
            assert (busy.running, busy.waiting) == (1, 1)
            if plugin == "llamacpp":  # /slots: the one slot is processing, its prompt in the cache
                assert busy.capacity == 1 and busy.kv_cache_usage is not None and busy.kv_cache_usage > 0
            else:
                assert busy.kv_cache_usage is not None and busy.kv_cache_usage > 0
            responses = await asyncio.wait_for(asyncio.gather(*held), timeout=20)
        assert [r.status_code for r in responses] == [200, 200]
        done = await _until(backend, lambda load: load.running == 0 and load.waiting == 0)
        assert (done.running, done.waiting) == (0, 0)


@pytest.mark.parametrize("plugin", ["vllm", "llamacpp"])
async def test_malformed_chunk_ends_the_stream_with_an_error(plugin: str) -> None:
    async with plugin_on_emulator(plugin, Knobs(fault="malformed_chunk", fault_after_tokens=1)) as (backend, _):
        stream = await backend.stream_chat({**CHAT, "max_tokens": 4, "stream": True})
        with pytest.raises(GatewayError):
            async for _events in stream:
                pass
