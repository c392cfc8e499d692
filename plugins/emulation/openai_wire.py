"""What every emulated OpenAI-compatible server shares: JSON and SSE framing, the fake generation,
faults before the first byte, and the token-streaming loop with its mid-stream faults.

Each server (trtllm-serve, vLLM, llama.cpp) differs in its chunk fields and error bodies, so
those come in through `StreamEvents` and `ErrorResponder`; the loop and the faults are here once.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
from aiohttp import web

from plugins.emulation.knobs import Fault
from plugins.emulation.model import Generation
from plugins.emulation.runtime import EmulatorRuntime, refuse

ErrorResponder = Callable[[int, str, dict[str, str]], web.Response]
SSE_DONE = b"data: [DONE]\n\n"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> web.Response:
    """Compact JSON (no spaces after separators), as Starlette's JSONResponse and nlohmann::json write it."""
    return web.Response(status=status, body=msgspec.json.encode(body),
                        headers={"Content-Type": content_type, **(headers or {})})


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or {} for a body that is not one (the route then refuses it)."""
    try:
        body = msgspec.json.decode(await request.read())
    except msgspec.DecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def sse_data(payload: Any) -> bytes:
    """One SSE event: `data: <compact JSON>` and a blank line."""
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


def new_id(prefix: str, hex_chars: int = 32) -> str:
    """An OpenAI-style id, `prefix-<hex>`; servers differ in how long the random part is."""
    return f"{prefix}-{os.urandom((hex_chars + 1) // 2).hex()[:hex_chars]}"


def stops(value: Any) -> list[str]:
    """OpenAI's `stop`: a string, a list of strings, or nothing."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else [s for s in value if isinstance(s, str)]


def completion_prompt(raw: Any) -> str:
    """A completion's `prompt` (a string or a list of them / of token ids) as the fake model's text."""
    return raw if isinstance(raw, str) else " ".join(str(p) for p in raw or ())


def include_usage(body: dict[str, Any], *, default_when_given: bool = False) -> bool:
    """Whether a stream ends with a usage chunk (`stream_options.include_usage`)."""
    options = body.get("stream_options")
    if not isinstance(options, dict):
        return False
    return bool(options.get("include_usage", default_when_given))


def generate(runtime: EmulatorRuntime, prompt: str, max_tokens: int | None, stop: list[str],
             prefill: str = "") -> Generation:
    """The fake model's reply (or its continuation after `prefill`): it ends on its own (the end
    token) unless max_tokens or a stop string comes first."""
    natural = runtime.model.generate(prompt, max_tokens=None, stop=stop, prefill=prefill)
    if max_tokens is not None and len(natural.tokens) > max_tokens:
        return runtime.model.generate(prompt, max_tokens=max_tokens, stop=stop, prefill=prefill)
    return natural


async def fault_before_answer(request: web.Request, runtime: EmulatorRuntime,
                              error: ErrorResponder) -> web.Response | None:
    """The response for a fault that strikes before any byte of the answer, or None."""
    fault = runtime.knobs.fault
    if fault is Fault.REFUSE:
        refuse(request)
    await runtime.hang_if_asked()
    if fault is Fault.HTTP_500:
        return error(500, "emulated fault: internal server error", {})
    if fault is Fault.HTTP_503:
        return error(503, "emulated fault: server unavailable", {})
    if fault is Fault.HTTP_429:
        return error(429, "emulated fault: too many requests", {"Retry-After": str(runtime.knobs.retry_after_s)})
    return None


def cut(request: web.Request) -> None:
    """Drop the connection mid-answer, as a crashed server would (no end of the chunked body).

    `close()`, not `abort()`: what was already written still goes out first, as it would have
    from a real server that sent it before crashing.
    """
    if request.transport is not None:
        request.transport.close()


async def whole_answer(request: web.Request, runtime: EmulatorRuntime, payload: Any,
                       content_type: str = "application/json") -> web.StreamResponse:
    """A non-streamed answer after pacing every token, with the faults that corrupt or cut a body."""
    encoded = msgspec.json.encode(payload)
    fault = runtime.knobs.fault
    if fault is Fault.MALFORMED_CHUNK:
        encoded = encoded[: len(encoded) // 2]
    elif fault is Fault.CUT_STREAM:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = len(encoded)
        await response.prepare(request)
        await response.write(encoded[: len(encoded) // 2])
        cut(request)
        return response
    return web.Response(body=encoded, headers={"Content-Type": content_type})


class StreamEvents(Protocol):
    """One server's SSE events for one streamed answer."""

    def opening(self) -> list[bytes]:
        """Events before the first token (a chat's role chunk)."""

    def token(self, text: str, last: bool) -> bytes:
        """The event carrying one token; `last` is the final token of the generation."""

    def closing(self) -> list[bytes]:
        """Events after the last token: finish, usage, `[DONE]`."""

    def error(self) -> list[bytes] | None:
        """The server's own in-stream failure report, or None where it has none (the fault then cuts)."""


async def stream_answer(request: web.Request, runtime: EmulatorRuntime, tokens: list[str], events: StreamEvents,
                        content_type: str) -> web.StreamResponse:
    """Stream `tokens` paced by the knobs, with cut_stream, malformed_chunk and stream_error faults."""
    fault = runtime.knobs.fault
    fault_at = runtime.knobs.fault_after_tokens if fault in (
        Fault.CUT_STREAM, Fault.MALFORMED_CHUNK, Fault.STREAM_ERROR) else None
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)  # both servers send their headers before the first token
    for event in events.opening():
        await response.write(event)
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        await runtime.pace(i)
        event = events.token(token, i == last)
        if i == fault_at:
            if fault is Fault.STREAM_ERROR:
                report = events.error()
                if report is not None:
                    for line in report:
                        await response.write(line)
                    await response.write_eof()
                    return response
            if fault in (Fault.CUT_STREAM, Fault.STREAM_ERROR):
                cut(request)
                return response
            event = event[: len(event) // 2] + b"\n\n"  # malformed: half a JSON object, framed as whole
        await response.write(event)
    for event in events.closing():
        await response.write(event)
    await response.write_eof()
    return response


def chat_prompt(messages: Any) -> str:
    """The text a chat template makes of `messages` (ChatML-like), for counting the fake model's prompt tokens."""
    parts = []
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            parts.append(f"<|im_start|>{message.get('role', 'user')}\n{content or ''}<|im_end|>")
    return "\n".join([*parts, "<|im_start|>assistant\n"])


def trailing_assistant(messages: Any) -> str | None:
    """The text of a final assistant message (what a server continues as a prefill), or None."""
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if last.get("role") != "assistant":
        return None
    content = last.get("content")
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


class WordVocab:
    """Whitespace words as token ids, stable across runs (crc32), with the reverse map for detokenizing."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._words: dict[int, str] = {}

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            token = zlib.crc32(word.encode()) % self.size
            self._words[token] = word
            ids.append(token)
        return ids

    def decode(self, ids: list[int]) -> str:
        return " ".join(self._words.get(i, f"<{i}>") for i in ids)
