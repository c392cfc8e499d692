"""msgspec Structs for the OpenAI wire format.

Requests are decoded twice cheaply: once into a plain dict (what is forwarded, so every
parameter the client sent reaches the backend untouched) and once converted into a Struct
(what the gateway validates and reads). Converting an already-decoded dict costs a few
microseconds and gives typed access plus precise error paths.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Role = Literal["system", "user", "assistant", "tool", "developer", "function"]


class StreamOptions(msgspec.Struct, kw_only=True):
    """`stream_options` of a streaming request."""

    include_usage: bool | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    """One message of a chat request; content is text, a list of content parts, or null."""

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    """`POST /v1/chat/completions`; unknown fields are kept in the forwarded dict, not here."""

    model: str
    messages: list[ChatMessage]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None


class CompletionRequest(msgspec.Struct, kw_only=True):
    """`POST /v1/completions` (legacy text completions)."""

    model: str
    # Text, texts, token ids or lists of token ids; msgspec cannot tell list types apart in
    # a union, so the element types are checked in gateway.api.decode.
    prompt: str | list[Any]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: int | None = None
    echo: bool | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    best_of: int | None = None
    suffix: str | None = None
    user: str | None = None


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    """`POST /v1/embeddings`."""

    model: str
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None
    user: str | None = None


class Usage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Token accounting as OpenAI reports it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ModelCard(msgspec.Struct, kw_only=True):
    """One entry of `GET /v1/models`."""

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "gateway"


class ModelList(msgspec.Struct, kw_only=True):
    """`GET /v1/models`."""

    data: list[ModelCard]
    object: str = "list"


RequestKind = Literal["chat", "completion", "embedding"]

# Where each kind is served: the app's routes, and what the access log and traces name as the path.
OPENAI_PATHS: dict[RequestKind, str] = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "embedding": "/v1/embeddings",
}

REQUEST_TYPES: dict[str, type[msgspec.Struct]] = {
    "chat": ChatCompletionRequest,
    "completion": CompletionRequest,
    "embedding": EmbeddingRequest,
}

# The parameters of OpenAI's own API for each endpoint: what an OpenAI-compatible server is
# expected to honour. Backend-specific extras (top_k, min_p, ...) are declared by plugins.
OPENAI_CHAT_PARAMS = frozenset(ChatCompletionRequest.__struct_fields__)
OPENAI_COMPLETION_PARAMS = frozenset(CompletionRequest.__struct_fields__)
OPENAI_EMBEDDING_PARAMS = frozenset(EmbeddingRequest.__struct_fields__)
