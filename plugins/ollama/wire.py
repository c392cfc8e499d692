"""What the plugin reads from Ollama: the fields it needs of each answer, for msgspec's decoder.

Field names are api/types.go's (ollama/ollama). Every field has a default because Go omits
empty ones (`omitempty`); unknown fields are ignored so a newer server's additions
(logprobs, remote_model, _debug_info...) cost nothing. A stream line and a whole answer
share one Struct: they differ only in which fields are set. `error` is there because a
stream reports a failure as one more line, `{"error": "..."}` (server/routes.go
streamResponse).
"""

from __future__ import annotations

from typing import Any

import msgspec


class ToolFunction(msgspec.Struct):
    """api.ToolCallFunction: arguments arrive as a JSON object, not a string as in OpenAI."""

    name: str = ""
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    index: int | None = None


class ToolCall(msgspec.Struct):
    """api.ToolCall; servers before ~0.12 send no id."""

    function: ToolFunction = msgspec.field(default_factory=ToolFunction)
    id: str = ""


class Message(msgspec.Struct):
    """api.Message of an answer."""

    role: str = "assistant"
    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] | None = None


class ChatAnswer(msgspec.Struct):
    """One `/api/chat` line or the whole non-streamed answer."""

    model: str = ""
    message: Message | None = None
    done: bool = False
    done_reason: str = ""
    prompt_eval_count: int = 0
    eval_count: int = 0
    error: str | None = None


class GenerateAnswer(msgspec.Struct):
    """One `/api/generate` line or the whole non-streamed answer."""

    model: str = ""
    response: str = ""
    thinking: str = ""
    done: bool = False
    done_reason: str = ""
    prompt_eval_count: int = 0
    eval_count: int = 0
    error: str | None = None


class EmbedAnswer(msgspec.Struct):
    """`/api/embed`'s answer."""

    model: str = ""
    embeddings: list[list[float]] = msgspec.field(default_factory=list)
    prompt_eval_count: int = 0


class RunningModel(msgspec.Struct):
    """One entry of `/api/ps` (api.ProcessModelResponse)."""

    name: str = ""
    model: str = ""
    size: int = 0
    size_vram: int = 0
    expires_at: str = ""
    context_length: int = 0


class RunningModels(msgspec.Struct):
    """`GET /api/ps`."""

    models: list[RunningModel] = msgspec.field(default_factory=list)


class PulledModel(msgspec.Struct):
    """One entry of `/api/tags`."""

    name: str = ""
    model: str = ""


class PulledModels(msgspec.Struct):
    """`GET /api/tags`."""

    models: list[PulledModel] = msgspec.field(default_factory=list)


class Version(msgspec.Struct):
    """`GET /api/version`."""

    version: str


def canonical_model(name: str) -> str:
    """`llama3.2` and `llama3.2:latest` are one model (docs/api.md, "Model names": the tag defaults to latest)."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"
