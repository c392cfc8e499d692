"""Resuming a failed stream against servers: a cut stream resumed end to end on the plugins'
emulators, and the one thing only a real server can show, that a trailing assistant message is
continued rather than answered, checked against the real llama.cpp server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.backend import Backend, BackendContext
from gateway.config import parse_config
from gateway.errors import GatewayError
from gateway.plugins import load_backend_registry
from gateway.routing.resume import ResumedStreamRewriter, continuation_request
from gateway.schemas import RequestKind
from gateway.upstream.aiohttp_client import AiohttpUpstream
from plugins.emulation import EmulatorRuntime, Fault, Knobs
from plugins.llamacpp.emulator.app import ServerArgs
from plugins.llamacpp.emulator.app import build_app as build_llamacpp
from plugins.ollama.emulator.app import OllamaEmulator
from plugins.tgi.emulator.app import build_app as build_tgi
from plugins.tgi.emulator.server_info import ServerState
from plugins.vllm.emulator.app import ServedModel
from plugins.vllm.emulator.app import build_app as build_vllm

from .test_resume import CHAT, data_of, events_of, progress_of, text_of

# -- end to end on the emulators ----------------------------------------------------------------

EMULATED: dict[str, tuple[Callable[[EmulatorRuntime, Knobs], web.Application], str, str]] = {
    "vllm": (lambda runtime, _k: build_vllm(runtime, ServedModel(name="m")), "/v1", "m"),
    "llamacpp": (lambda runtime, _k: build_llamacpp(runtime, ServerArgs(alias="m")), "", "m"),
    "tgi": (lambda runtime, _k: build_tgi(runtime, ServerState(model_id="m")), "", "m"),
    "ollama": (lambda _runtime, knobs: OllamaEmulator(knobs, models=["llama3.2"]).app(), "", "llama3.2"),
}


@asynccontextmanager
async def emulated_backend(plugin: str, knobs: Knobs) -> AsyncIterator[Backend]:
    """The plugin's backend in front of an in-process emulator of its server."""
    build, suffix, model = EMULATED[plugin]
    server = TestServer(build(EmulatorRuntime(knobs), knobs), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/") + suffix
    registry = load_backend_registry()
    config = parse_config({"backends": [{"name": plugin, "plugin": plugin, "model": model, "url": url}],
                           "routes": [{"model": "m", "backends": [plugin]}]}, env={},
                          validators=registry.validators())
    upstream = AiohttpUpstream()
    backend: Backend = registry.types[plugin](config.backends[0], BackendContext(upstream=upstream))
    try:
        await backend.start()
        yield backend
    finally:
        await backend.aclose()
        await upstream.aclose()
        await server.close()


async def stream_of(backend: Backend, kind: RequestKind, body: dict[str, Any]) -> tuple[list[bytes], Exception | None]:
    """The batches a stream yields, and the failure that ended it early (None when it completed)."""
    stream = await (backend.stream_chat(dict(body)) if kind == "chat" else backend.stream_completion(dict(body)))
    batches: list[bytes] = []
    try:
        async for events in stream:
            batches.append(events)
    except GatewayError as err:
        return batches, err
    finally:
        await stream.aclose()
    return batches, None


@pytest.mark.parametrize("plugin", ["llamacpp", "vllm", "tgi", "ollama"])
async def test_a_cut_chat_stream_resumes_on_a_second_emulator_as_one_stream(plugin: str) -> None:
    body = {**CHAT, "max_tokens": 12}
    async with emulated_backend(plugin, Knobs()) as healthy:
        reference, failure = await stream_of(healthy, "chat", body)
        assert failure is None
        whole = b"".join(reference)
        async with emulated_backend(plugin, Knobs(fault=Fault.CUT_STREAM, fault_after_tokens=4)) as failing:
            sent, failure = await stream_of(failing, "chat", body)
        assert failure is not None  # the first server dropped the connection mid-answer
        progress = progress_of(*sent)
        assert progress.content_events == 4 and not progress.finished
        request = continuation_request("chat", body, progress, healthy)
        assert request is not None
        rewriter = ResumedStreamRewriter("chat", progress)
        rest, failure = await stream_of(healthy, "chat", request)
        assert failure is None
        resumed = b"".join(rewriter.rewrite(batch) for batch in rest)
    client = b"".join(sent) + resumed
    assert text_of(client) == text_of(whole)  # a greedy model continues where the first one stopped
    chunks = [c for c in data_of(client) if c != "[DONE]"]
    assert {c["id"] for c in chunks} == {progress.id}
    # The role went out with the first backend's chunks; the continuation does not announce it again.
    assert not [ch for c in data_of(resumed)[:-1] for ch in c["choices"] if "role" in ch.get("delta", {})]
    assert data_of(client).count("[DONE]") == 1 and data_of(client)[-1] == "[DONE]"


# -- the real llama.cpp server -------------------------------------------------------------------


@asynccontextmanager
async def real_llamacpp(url: str) -> AsyncIterator[Backend]:
    registry = load_backend_registry()
    config = parse_config({"backends": [{"name": "llama", "plugin": "llamacpp", "model": "smollm2", "url": url,
                                         "timeouts": {"connect_s": 2, "first_token_s": 60, "total_s": 120}}],
                           "routes": [{"model": "smollm2", "backends": ["llama"]}]}, env={},
                          validators=registry.validators())
    upstream = AiohttpUpstream()
    try:
        yield registry.types["llamacpp"](config.backends[0], BackendContext(upstream=upstream))
    finally:
        await upstream.aclose()


def word_boundary_cut(events: list[bytes], at_least: int) -> int:
    """How many of `events` to keep so the text sent ends a word and the next token starts a new one."""
    texts = [text_of(event) for event in events]
    for keep in range(at_least, len(events) - 1):
        sent, following = "".join(texts[:keep]), texts[keep]
        if sent.strip() and not sent[-1].isspace() and following.startswith(" ") and following.strip():
            return keep
    raise AssertionError(f"no word boundary in {texts!r}")


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["chat", "completion"])
async def test_the_real_llamacpp_server_continues_a_prefill(llama_server: Any, kind: RequestKind) -> None:
    """Greedy: the answer cut at a word boundary and continued on the server equals the answer in one go."""
    if kind == "chat":
        body: dict[str, Any] = {"model": "smollm2", "stream": True, "temperature": 0, "max_tokens": 24,
                                "messages": [{"role": "user", "content": "Write one sentence about the sea."}]}
    else:
        body = {"model": "smollm2", "stream": True, "temperature": 0, "max_tokens": 24,
                "prompt": "The three most common colours of a ship's hull are"}
    # Two backend objects on the one server, as the gateway would have two backends: each with
    # its own connection pool.
    async with real_llamacpp(llama_server.url) as first, real_llamacpp(llama_server.url) as backend:
        batches, failure = await stream_of(first, kind, body)
        assert failure is None
        events = [event for batch in batches for event in events_of(batch)]
        full = text_of(b"".join(events))
        first_words = full.split()[:2]
        keep = word_boundary_cut(events, at_least=4 if kind == "chat" else 3)
        progress = progress_of(*events[:keep])  # as if the first server had died right there
        sent = progress.choices[0].text
        request = continuation_request(kind, body, progress, backend)
        assert request is not None
        rewriter = ResumedStreamRewriter(kind, progress)
        rest, failure = await stream_of(backend, kind, request)
        assert failure is None
        continued = text_of(b"".join(rewriter.rewrite(batch) for batch in rest))
    # The continuation picks the answer up: it does not open it again ...
    assert continued.split()[:2] != first_words
    assert continued.startswith(" ")  # the next word, after the word the prefill ended with
    # ... and greedy decoding of the same model on the same server gives the rest of the same answer.
    assert sent + continued == full, (sent, continued, full)
