"""The Backend protocol every plugin implements, and what the gateway hands a backend.

A backend speaks OpenAI's wire format to the gateway whatever its server speaks natively:
non-streaming calls return the JSON body of an OpenAI response, streaming calls return an
`EventStream` of complete OpenAI SSE events. Keeping the gateway side in OpenAI bytes lets
an OpenAI-compatible server's bytes pass straight through with no re-encoding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import msgspec

from gateway.config import BackendConfig
from gateway.errors import GatewayError
from gateway.schemas import RequestKind

if TYPE_CHECKING:
    from gateway.upstream import UpstreamClient


class BackendUnavailable(GatewayError):
    """The backend could not take the request and nothing was sent: try another candidate."""

    def __init__(self, backend: str, reason: str, *, mark_down: bool = True, throttled: bool = False) -> None:
        super().__init__(503, f"backend '{backend}' unavailable: {reason}", type="api_error",
                         code="backend_unavailable")
        self.reason = reason
        # True when the server itself is unreachable (not merely busy): its circuit breaker
        # opens at once instead of after several failures.
        self.mark_down = mark_down
        # True for a 429: the server is alive and asked for patience (its Retry-After is in
        # `headers`), so it is not counted against its breaker.
        self.throttled = throttled


class Capabilities(msgspec.Struct, kw_only=True, frozen=True):
    """What a backend can do beyond OpenAI chat; later features (speculation) read this."""

    chat: bool = True
    completion: bool = True
    embeddings: bool = False
    token_id_prompts: bool = False
    tokenize: bool = False
    prompt_logprobs: bool = False
    # The server continues a trailing assistant message instead of starting a new turn (a prefill).
    assistant_prefill: bool = False


class BackendLoad(msgspec.Struct, kw_only=True):
    """Load read from the server's own metrics; None where the server does not say."""

    running: float | None = None  # requests being generated now
    waiting: float | None = None  # requests queued in the server
    kv_cache_usage: float | None = None  # 0..1
    capacity: float | None = None  # requests the server runs at once (slots, max batch)


class EventStream(Protocol):
    """An open streaming response: complete SSE events in OpenAI format, then `data: [DONE]`.

    Iterating yields bytes holding one or more whole events as soon as they arrive; it
    ends after `data: [DONE]` or raises `GatewayError` if the server fails mid-way.
    """

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class BackendContext(msgspec.Struct, kw_only=True):
    """Shared services the gateway hands each backend when it builds it."""

    upstream: UpstreamClient
    config_dir: str = "."


@runtime_checkable
class Backend(Protocol):
    """One configured inference server. Built by its plugin's class from a `BackendConfig`."""

    plugin: ClassVar[str]
    name: str
    config: BackendConfig
    capabilities: Capabilities

    def supported_params(self, kind: RequestKind) -> frozenset[str]:
        """The request fields this backend honours for `kind`; others are refused with 422."""
        ...

    def check_params(self, kind: RequestKind, body: dict[str, Any]) -> None:
        """Raise a 422 `GatewayError` for a value the server cannot honour (e.g. `echo` on a server that ignores it)."""
        ...

    async def start(self) -> None:
        """Open connections or launch a managed server; called once at gateway start-up."""
        ...

    async def chat(self, body: dict[str, Any]) -> bytes:
        """A non-streaming chat completion: returns OpenAI `chat.completion` JSON bytes."""
        ...

    async def stream_chat(self, body: dict[str, Any]) -> EventStream:
        """Open a streaming chat completion; returns once the server has accepted it."""
        ...

    async def completion(self, body: dict[str, Any]) -> bytes:
        """A non-streaming text completion (`text_completion` JSON bytes)."""
        ...

    async def stream_completion(self, body: dict[str, Any]) -> EventStream:
        """Open a streaming text completion."""
        ...

    async def embeddings(self, body: dict[str, Any]) -> bytes:
        """Embeddings, where the server has them (OpenAI `list` JSON bytes)."""
        ...

    async def health(self) -> bool:
        """True when the server answers its health check and can take requests."""
        ...

    async def load(self) -> BackendLoad:
        """Queue depth, running requests and KV-cache use from the server's own metrics."""
        ...

    async def aclose(self) -> None:
        """Release connections and stop a managed server."""
        ...


class BackendFactory(Protocol):
    """What `register_backends` receives: a class (or callable) building a Backend."""

    def __call__(self, config: BackendConfig, context: BackendContext) -> Backend: ...

    @staticmethod
    def validate_config(config: BackendConfig) -> Iterable[tuple[str, str]]:
        """Plugin-specific config problems as (key sub-path, message)."""
        ...
