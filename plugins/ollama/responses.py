"""Ollama's whole (non-streamed) answers as OpenAI response bodies.

`prompt_eval_count` and `eval_count` are OpenAI's prompt and completion tokens, and
`done_reason` is the finish reason: "length" stays "length", "stop" becomes "tool_calls"
when the model called a tool, and the load/unload answers of an empty request are "stop"
(ollama/ollama openai/openai.go ToUsage, ToChatCompletion; llm/server.go DoneReason).
"""

from __future__ import annotations

import base64
import os
import struct
import time
from typing import Any

import msgspec

from plugins.ollama.wire import ChatAnswer, EmbedAnswer, GenerateAnswer, ToolCall

_encode = msgspec.json.Encoder().encode


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(12).hex()}"


def finish_reason(done_reason: str, called_tools: bool) -> str:
    if done_reason == "length":
        return "length"
    return "tool_calls" if called_tools else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def tool_calls(calls: list[ToolCall], *, with_index: bool) -> list[dict[str, Any]]:
    """OpenAI tool calls: arguments as a JSON string, an id even where an older server sent none."""
    out = []
    for position, call in enumerate(calls):
        entry: dict[str, Any] = {
            "id": call.id or "call_" + os.urandom(12).hex(),
            "type": "function",
            "function": {"name": call.function.name, "arguments": _encode(call.function.arguments).decode()},
        }
        if with_index:
            entry = {"index": position, **entry}
        out.append(entry)
    return out


def chat_completion(answer: ChatAnswer) -> bytes:
    message = answer.message
    calls = tool_calls(message.tool_calls, with_index=False) if message and message.tool_calls else []
    content = message.content if message else ""
    reply: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
    if message and message.thinking:
        reply["reasoning_content"] = message.thinking  # the field vLLM and DeepSeek use for reasoning
    if calls:
        reply["tool_calls"] = calls
    return _encode({
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": answer.model,
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": finish_reason(answer.done_reason, bool(calls))}],
        "usage": usage(answer.prompt_eval_count, answer.eval_count),
    })


def text_completion(answer: GenerateAnswer) -> bytes:
    return _encode({
        "id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": answer.model,
        "choices": [{"index": 0, "text": answer.response, "logprobs": None,
                     "finish_reason": finish_reason(answer.done_reason, False)}],
        "usage": usage(answer.prompt_eval_count, answer.eval_count),
    })


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the vector as little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embedding_list(answer: EmbedAnswer, encoding_format: str | None) -> bytes:
    as_base64 = encoding_format == "base64"
    data = [{"object": "embedding", "index": i, "embedding": _base64_floats(v) if as_base64 else v}
            for i, v in enumerate(answer.embeddings)]
    return _encode({
        "object": "list", "data": data, "model": answer.model,
        "usage": {"prompt_tokens": answer.prompt_eval_count, "total_tokens": answer.prompt_eval_count},
    })
