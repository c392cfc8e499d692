"""What the emulator's fake model answers: text, structured output, tool calls and embeddings.

Built on the shared `FakeModel` (whitespace tokens, stop strings, length limits). What is
Ollama-specific is how a request picks the kind of answer: `format` asks for JSON
(docs/api.md "Structured outputs", "JSON mode"), `tools` lets the model call one
(docs/api.md "Chat request (with tools)"), and `/api/embed` returns L2-normalised vectors
(server/routes.go EmbedHandler, `normalize`).
"""

from __future__ import annotations

import hashlib
import math
import random
import string
import struct
from dataclasses import dataclass
from typing import Any

from plugins.emulation import FakeModel, Generation
from plugins.emulation.model import count_tokens
from plugins.ollama.emulator.wire import ToolCall, ToolCallFunction, go_json

EMBEDDING_SIZE = 384  # all-minilm's width, the model docs/api.md's embed examples use


@dataclass(frozen=True, slots=True)
class Answer:
    """One request's output: the pieces to stream, why it ended, and token counts."""

    pieces: list[str]
    done_reason: str  # "stop" or "length" (llm/server.go DoneReason.String)
    prompt_tokens: int
    eval_tokens: int
    tool_calls: list[ToolCall] | None = None


def _done_reason(generation: Generation) -> str:
    return "length" if generation.finish == "length" else "stop"


def text_answer(model: FakeModel, prompt: str, num_predict: int | None, stop: list[str] | None,
                prefill: str = "") -> Answer:
    """The fake model's reply (or its continuation after `prefill`); `num_predict` None or negative
    means no limit (api.DefaultOptions: -1)."""
    limit = num_predict if num_predict is not None and num_predict >= 0 else None
    generation = model.generate(prompt, max_tokens=limit, stop=stop, prefill=prefill)
    return Answer(generation.tokens, _done_reason(generation), max(generation.prompt_tokens, 1),
                  len(generation.tokens))


def _value_for(schema: Any, text: str) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: _value_for(sub, text) for name, sub in properties.items()}
    if kind == "array":
        return [_value_for(schema.get("items") or {"type": "string"}, text)]
    if kind == "integer":
        return 22
    if kind == "number":
        return 22.5
    if kind == "boolean":
        return True
    enum = schema.get("enum") if isinstance(schema, dict) else None
    if enum:
        return enum[0]
    return text


def json_answer(model: FakeModel, prompt: str, format_value: Any) -> Answer:
    """A JSON document: `{"response": ...}` for `"json"`, else an instance of the schema."""
    text = model.generate(prompt, max_tokens=None).text
    document = {"response": text} if format_value == "json" else _value_for(format_value, text)
    body = go_json(document).decode()
    # Stream structured output in small pieces, as a model emits JSON a token at a time.
    pieces = [body[i:i + 8] for i in range(0, len(body), 8)]
    return Answer(pieces, "stop", max(count_tokens(prompt), 1), len(pieces))


def tool_call_id(rng: random.Random) -> str:
    """`call_` + 8 lowercase letters or digits (server/routes.go toolCallId)."""
    return "call_" + "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def tool_answer(tools: list[dict[str, Any]], prompt: str, last_user: str, rng: random.Random) -> Answer | None:
    """A call of the first tool with arguments for its required parameters, or None without usable tools."""
    function = tools[0].get("function") if tools and isinstance(tools[0], dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return None
    parameters = function.get("parameters")
    if not isinstance(parameters, dict):
        parameters = {}
    properties = parameters.get("properties") or {}
    required = parameters.get("required") or list(properties)
    arguments = {name: _value_for(properties.get(name) or {"type": "string"}, last_user or "emulated")
                 for name in required}
    call = ToolCall(id=tool_call_id(rng), function=ToolCallFunction(index=0, name=function["name"],
                                                                     arguments=arguments))
    return Answer([""], "stop", max(count_tokens(prompt), 1), max(count_tokens(go_json(arguments).decode()), 1),
                  tool_calls=[call])


def embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for `text`; `dimensions` truncates and renormalises, as Ollama does."""
    seed = hashlib.sha256(text.encode()).digest()
    rng = random.Random(seed)
    vector = [rng.uniform(-1.0, 1.0) for _ in range(EMBEDDING_SIZE)]
    if 0 < dimensions < EMBEDDING_SIZE:
        vector = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [_float32(v / norm) for v in vector]


def _float32(value: float) -> float:
    """`value` as Go writes a float32: the shortest decimal that reads back as the same float32."""
    single: float = struct.unpack("<f", struct.pack("<f", value))[0]
    for digits in range(6, 10):
        short = float(f"{single:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", short))[0] == single:
            return short
    return single
