"""msgspec Structs for the OpenAI bodies the plugin builds from TGI's answers, and their encoder."""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from plugins.tgi.wire import Usage

encode = msgspec.json.Encoder().encode
DONE = b"data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    """An OpenAI-style id; TGI sends `""`, which some clients use as a dictionary key."""
    return f"{prefix}-{os.urandom(12).hex()}"


def now() -> int:
    return int(time.time())


def sse(body: msgspec.Struct) -> bytes:
    """One OpenAI SSE event (`data: {...}\\n\\n`, with the space OpenAI's own server writes)."""
    return b"data: " + encode(body) + b"\n\n"


class CompletionLogprobs(msgspec.Struct):
    """The legacy completions `logprobs` object."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(msgspec.Struct):
    """One choice of a `text_completion` (also used for its stream chunks)."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(msgspec.Struct, omit_defaults=True, kw_only=True):
    """`text_completion` body or chunk; `usage` is left out of chunks that do not carry it."""

    id: str
    object: str  # no default: omit_defaults would drop it
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatMessageOut(msgspec.Struct, omit_defaults=True):
    """`message` of a `chat.completion` choice: OpenAI sends `content: null` beside tool calls."""

    role: str
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoiceOut(msgspec.Struct):
    index: int
    message: ChatMessageOut
    logprobs: Any = None
    finish_reason: str | None = None


class ChatCompletionOut(msgspec.Struct, omit_defaults=True, kw_only=True):
    """`chat.completion`."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoiceOut]
    usage: Usage


class ChatDeltaOut(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChunkChoiceOut(msgspec.Struct):
    index: int
    delta: ChatDeltaOut
    logprobs: Any = None
    finish_reason: str | None = None


class ChatChunkOut(msgspec.Struct, omit_defaults=True, kw_only=True):
    """`chat.completion.chunk`; a usage chunk has no choices and carries `usage`."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoiceOut]
    usage: Usage | None = None
