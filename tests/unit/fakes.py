"""Fakes shared by the unit tests: a scripted backend, event streams, config and error helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import msgspec

from gateway.backend import BackendContext, BackendLoad, Capabilities, EventStream
from gateway.config import BackendConfig, GatewayConfig, TimeoutsConfig, parse_config
from gateway.errors import GatewayError
from gateway.plugins import BackendRegistry
from gateway.schemas import (
    OPENAI_CHAT_PARAMS,
    OPENAI_COMPLETION_PARAMS,
    OPENAI_EMBEDDING_PARAMS,
    RequestKind,
)
from gateway.upstream import UpstreamConnectError

BACKEND_MODEL = "backend/model.gguf"

def chat_completion_json(content: str = "hello", model: str = BACKEND_MODEL) -> bytes:
    """A fixed OpenAI `chat.completion` body as a backend would return it."""
    return msgspec.json.encode({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    })


def chunk_event(content: str, model: str = BACKEND_MODEL) -> bytes:
    """One `chat.completion.chunk` SSE event."""
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


DONE = b"data: [DONE]\n\n"


class ScriptedStream:
    """An `EventStream` that yields (or raises) its items in order, optionally after a delay."""

    def __init__(self, items: list[bytes | BaseException], *, delay_s: float = 0.0) -> None:
        self.items = items
        self.delay_s = delay_s
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for item in self.items:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if isinstance(item, BaseException):
                raise item
            yield item

    async def aclose(self) -> None:
        self.closed = True


Outcome = bytes | BaseException


class FakeBackend:
    """A Backend whose answers are scripted per test; records every call it gets."""

    plugin: ClassVar[str] = "fake"

    def __init__(self, config: BackendConfig, context: BackendContext | None = None) -> None:
        self.name = config.name
        self.config = config
        self.capabilities = Capabilities(embeddings=True)
        self.params: dict[str, frozenset[str]] = {
            "chat": OPENAI_CHAT_PARAMS,
            "completion": OPENAI_COMPLETION_PARAMS,
            "embedding": OPENAI_EMBEDDING_PARAMS,
        }
        self.reply: Outcome | Callable[[], Outcome] = chat_completion_json()  # a callable answers per call
        self.stream_factory: Callable[[], EventStream] | BaseException = lambda: ScriptedStream(
            [chunk_event("hel"), chunk_event("lo") + DONE]
        )
        self.param_check: Callable[[RequestKind, dict[str, Any]], None] | None = None
        self.healthy: bool | BaseException = True
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.streams: list[EventStream] = []
        self.started = False
        self.closed = False

    def supported_params(self, kind: RequestKind) -> frozenset[str]:
        return self.params[kind]

    def check_params(self, kind: RequestKind, body: dict[str, Any]) -> None:
        if self.param_check is not None:
            self.param_check(kind, body)

    async def start(self) -> None:
        self.started = True

    async def _answer(self, what: str, body: dict[str, Any]) -> bytes:
        self.calls.append((what, body))
        reply = self.reply() if callable(self.reply) else self.reply
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def _open(self, what: str, body: dict[str, Any]) -> EventStream:
        self.calls.append((what, body))
        if isinstance(self.stream_factory, BaseException):
            raise self.stream_factory
        stream = self.stream_factory()
        self.streams.append(stream)
        return stream

    async def chat(self, body: dict[str, Any]) -> bytes:
        return await self._answer("chat", body)

    async def stream_chat(self, body: dict[str, Any]) -> EventStream:
        return await self._open("stream_chat", body)

    async def completion(self, body: dict[str, Any]) -> bytes:
        return await self._answer("completion", body)

    async def stream_completion(self, body: dict[str, Any]) -> EventStream:
        return await self._open("stream_completion", body)

    async def embeddings(self, body: dict[str, Any]) -> bytes:
        return await self._answer("embeddings", body)

    async def health(self) -> bool:
        if isinstance(self.healthy, BaseException):
            raise self.healthy
        return self.healthy

    async def load(self) -> BackendLoad:
        return BackendLoad()

    async def aclose(self) -> None:
        self.closed = True


class FakeUpstream:
    """An `UpstreamClient` that refuses every request: the fakes never use the network."""

    def __init__(self) -> None:
        self.closed = False

    async def request(self, method: str, url: str, **_: Any) -> Any:
        raise UpstreamConnectError(f"no network in unit tests ({method} {url})")

    async def open_stream(self, method: str, url: str, **_: Any) -> Any:
        raise UpstreamConnectError(f"no network in unit tests ({method} {url})")

    async def aclose(self) -> None:
        self.closed = True


def backend_config(name: str, *, plugin: str = "fake", first_token_s: float = 30.0, **extra: Any) -> BackendConfig:
    return BackendConfig(
        name=name, plugin=plugin, model=extra.pop("model", BACKEND_MODEL),
        timeouts=TimeoutsConfig(first_token_s=first_token_s), **extra,
    )


def make_backend(name: str, **kwargs: Any) -> FakeBackend:
    return FakeBackend(backend_config(name, **kwargs))


def fake_registry() -> BackendRegistry:
    registry = BackendRegistry()
    registry.register("fake", FakeBackend, "tests")
    return registry


# One fake backend `f1` behind a catch-all route.
DEFAULT_CONFIG: dict[str, Any] = {
    "backends": [{"name": "f1", "plugin": "fake", "model": BACKEND_MODEL}],
    "routes": [{"model": "*", "backends": ["f1"]}],
}


def gateway_config(raw: dict[str, Any] | None = None) -> GatewayConfig:
    """DEFAULT_CONFIG, unless `raw` says otherwise."""
    return parse_config(raw or DEFAULT_CONFIG, env={}, validators=fake_registry().validators())


def assert_error_shape(body: Any) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}` exactly; returns the inner object."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    return error


def assert_gateway_error(err: GatewayError, status: int, param: str | None) -> dict[str, Any]:
    """The error's status and param, and that its body is OpenAI's error shape naming the same param."""
    assert err.status == status, (err.status, err.message)
    assert err.param == param, (err.param, err.message)
    error = assert_error_shape(msgspec.json.decode(err.body()))
    assert error["param"] == param
    assert error["message"] == err.message
    return error

