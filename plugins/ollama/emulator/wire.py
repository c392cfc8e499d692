"""Ollama's response bodies, field for field, as its Go server encodes them.

Every Struct here mirrors one struct of ollama/ollama `api/types.go` (commit fb30760, 2026-08)
in declaration order, because Go's encoding/json writes fields in that order. A field with
`omitempty` in Go has a default here and the Structs use `omit_defaults`, so a zero value is
left out exactly as Go leaves it out; a field without `omitempty` has no default (or is
always set), so it is always written. Durations are integers in nanoseconds (docs/api.md,
"Durations").
"""

from __future__ import annotations

import time
from typing import Any

import msgspec


class ToolCallFunction(msgspec.Struct, omit_defaults=True):
    """api.ToolCallFunction: `index` has no omitempty, so it is always written."""

    index: int
    name: str
    arguments: dict[str, Any]


class ToolCall(msgspec.Struct, omit_defaults=True):
    """api.ToolCall: the server gives every call an id, `call_` + 8 chars (server/routes.go toolCallId)."""

    id: str
    function: ToolCallFunction


class Message(msgspec.Struct, omit_defaults=True):
    """api.Message: `role` and `content` always written, the rest omitempty."""

    role: str
    content: str
    thinking: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str = ""
    tool_call_id: str = ""


class ChatResponse(msgspec.Struct, omit_defaults=True):
    """api.ChatResponse with its embedded api.Metrics (written last, as Go flattens it)."""

    model: str
    created_at: str
    message: Message
    done: bool
    done_reason: str = ""
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


class GenerateResponse(msgspec.Struct, omit_defaults=True):
    """api.GenerateResponse: `response` and `done` always written; Metrics between context and tool_calls."""

    model: str
    created_at: str
    response: str
    done: bool
    done_reason: str = ""
    context: list[int] | None = None
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


class EmbedResponse(msgspec.Struct, omit_defaults=True):
    """api.EmbedResponse."""

    model: str
    embeddings: list[list[float]]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0


class ModelDetails(msgspec.Struct):
    """api.ModelDetails (its omitempty context_length/embedding_length are not reported by /api/tags)."""

    parent_model: str
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class ListModelResponse(msgspec.Struct):
    """One entry of `GET /api/tags` (api.ListModelResponse)."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class ListResponse(msgspec.Struct):
    models: list[ListModelResponse]


class ProcessModelResponse(msgspec.Struct):
    """One entry of `GET /api/ps` (api.ProcessModelResponse; no omitempty on any field)."""

    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int


class ProcessResponse(msgspec.Struct):
    models: list[ProcessModelResponse]


_encoder = msgspec.json.Encoder()
# Go's json.Marshal escapes these inside strings by default (encoding/json, HTMLEscape);
# in JSON they can only occur inside strings, so a byte replace is exact.
_GO_ESCAPES = ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026"),
               ("\u2028".encode(), b"\\u2028"), ("\u2029".encode(), b"\\u2029"))


def go_json(value: Any) -> bytes:
    """`value` encoded as Go's json.Marshal would write it."""
    data = _encoder.encode(value)
    for raw, escaped in _GO_ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


def go_time(ns: int | None = None) -> str:
    """A UTC time in Go's RFC3339Nano: nanoseconds with trailing zeros trimmed, then `Z`."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def error_body(message: str) -> bytes:
    """`{"error": "..."}`: every Ollama error, gin.H{"error": msg} (server/routes.go)."""
    return go_json({"error": message})
