"""Ollama's NDJSON streams as OpenAI SSE events.

Ollama streams one JSON object per line, `done: false` ones carrying text and a final
`done: true` one carrying `done_reason` and token counts; a failure after the first byte
is one more line, `{"error": "..."}` (server/routes.go streamResponse). Each line becomes
whole OpenAI `chat.completion.chunk` (or `text_completion`) events, then a finish event,
a usage event when the client asked for one, and `data: [DONE]`. The common line (text
only) is written from pre-encoded bytes around the JSON-encoded text: one encode a token.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from gateway.errors import GatewayError, backend_failed
from gateway.sse import DONE_EVENT
from gateway.upstream import UpstreamError, UpstreamStream
from plugins.ollama.responses import finish_reason, new_id, tool_calls, usage
from plugins.ollama.wire import ChatAnswer, GenerateAnswer
from plugins.openai_compat.errors import transport_error

_encode = msgspec.json.Encoder().encode
_decode_chat = msgspec.json.Decoder(ChatAnswer).decode
_decode_generate = msgspec.json.Decoder(GenerateAnswer).decode


class _Translator:
    """State of one stream: its id, whether the first event and the end have been seen."""

    object_name = b""

    def __init__(self, backend: str, include_usage: bool, id_prefix: str) -> None:
        self.backend = backend
        self.include_usage = include_usage
        self.done = False
        self._id = new_id(id_prefix).encode()
        self._created = str(int(time.time())).encode()
        self._head = b""  # `data: {"id":...,"model":...,"choices":[{"index":0,` once the model is known

    def _start(self, model: str) -> None:
        self._head = (b'data: {"id":"' + self._id + b'","object":"' + self.object_name + b'","created":'
                      + self._created + b',"model":' + _encode(model) + b',"choices":[{"index":0,')

    def _closing(self, reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        self.done = True
        events = self._finish(reason)
        if self.include_usage:
            events += (self._head.partition(b'"choices":')[0] + b'"choices":[],"usage":'
                       + _encode(usage(prompt_tokens, completion_tokens)) + b"}\n\n")
        return events + DONE_EVENT

    def _finish(self, reason: str) -> bytes:
        raise NotImplementedError

    def line(self, raw: bytes) -> bytes:
        raise NotImplementedError

    def failed(self, detail: str) -> GatewayError:
        return backend_failed(self.backend, detail)


class ChatTranslator(_Translator):
    """`/api/chat` lines as `chat.completion.chunk` events."""

    object_name = b"chat.completion.chunk"

    def __init__(self, backend: str, include_usage: bool) -> None:
        super().__init__(backend, include_usage, "chatcmpl")
        self._role_sent = False
        self._called_tools = 0

    def _open_delta(self) -> bytes:
        """The start of a delta object: the first one of the stream names the role."""
        if self._role_sent:
            return b"{"
        self._role_sent = True
        return b'{"role":"assistant",'

    def _delta(self, delta: bytes) -> bytes:
        return self._head + b'"delta":' + delta + b',"logprobs":null,"finish_reason":null}]}\n\n'

    def _finish(self, reason: str) -> bytes:
        return self._head + b'"delta":{},"logprobs":null,"finish_reason":"' + reason.encode() + b'"}]}\n\n'

    def line(self, raw: bytes) -> bytes:
        answer = _decode_chat(raw)
        if answer.error is not None:
            raise self.failed(answer.error)
        if not self._head:
            self._start(answer.model)
        events = b""
        message = answer.message
        content = message.content if message is not None else ""
        thinking = message.thinking if message is not None else ""
        if thinking:  # reasoning before the answer, as Ollama's own OpenAI layer orders them (openai/openai.go)
            events += self._delta(self._open_delta() + b'"reasoning_content":' + _encode(thinking) + b"}")
        if content or not self._role_sent:
            # OpenAI's first delta names the role; it is sent even when the first line has no text.
            events += self._delta(self._open_delta() + b'"content":' + _encode(content) + b"}")
        if message is not None and message.tool_calls:
            calls = tool_calls(message.tool_calls, with_index=True)
            for call in calls:
                call["index"] += self._called_tools
            self._called_tools += len(calls)
            events += self._delta(b'{"tool_calls":' + _encode(calls) + b"}")
        if answer.done:
            reason = finish_reason(answer.done_reason, self._called_tools > 0)
            events += self._closing(reason, answer.prompt_eval_count, answer.eval_count)
        return events


class CompletionTranslator(_Translator):
    """`/api/generate` lines as `text_completion` events."""

    object_name = b"text_completion"

    def __init__(self, backend: str, include_usage: bool) -> None:
        super().__init__(backend, include_usage, "cmpl")
        self._sent_any = False

    def _text(self, text: str) -> bytes:
        return self._head + b'"text":' + _encode(text) + b',"logprobs":null,"finish_reason":null}]}\n\n'

    def _finish(self, reason: str) -> bytes:
        return self._head + b'"text":"","logprobs":null,"finish_reason":"' + reason.encode() + b'"}]}\n\n'

    def line(self, raw: bytes) -> bytes:
        answer = _decode_generate(raw)
        if answer.error is not None:
            raise self.failed(answer.error)
        if not self._head:
            self._start(answer.model)
        events = b""
        if answer.response or not self._sent_any:
            self._sent_any = True
            events += self._text(answer.response)
        if answer.done:
            events += self._closing(finish_reason(answer.done_reason, False), answer.prompt_eval_count,
                                    answer.eval_count)
        return events


class OllamaEventStream:
    """An open Ollama stream read as OpenAI events; raises `GatewayError` if it fails or is cut."""

    def __init__(self, upstream: UpstreamStream, translator: _Translator,
                 on_close: Callable[[], None] | None = None) -> None:
        self._upstream = upstream
        self._translator = translator
        self._on_close = on_close

    def _lines(self, blob: bytes) -> tuple[bytes, GatewayError | None]:
        """Events for a run of complete lines, and the failure that stopped them, if any."""
        events: list[bytes] = []
        translator = self._translator
        for raw in blob.split(b"\n"):
            if translator.done:
                break  # nothing after the final object is the client's
            if not raw.strip():
                continue
            try:
                events.append(translator.line(raw))
            except GatewayError as failure:
                return b"".join(events), failure
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as err:
                excerpt = raw[:120].decode("utf-8", "replace")
                return b"".join(events), translator.failed(f"malformed stream line ({err}): {excerpt!r}")
        return b"".join(events), None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pending = b""
        translator = self._translator
        try:
            async for data in self._upstream.chunks():
                if translator.done:
                    continue  # read to the end so the connection goes back to the pool
                pending += data
                end = pending.rfind(b"\n")
                if end < 0:
                    continue
                events, failure = self._lines(pending[:end])
                pending = pending[end + 1:]
                if events:
                    yield events
                if failure is not None:
                    raise failure
        except UpstreamError as err:
            raise transport_error(translator.backend, err) from err
        if not translator.done and pending.strip():
            events, failure = self._lines(pending)  # a last line without its newline
            if events:
                yield events
            if failure is not None:
                raise failure
        if not translator.done:
            raise translator.failed("stream ended before Ollama's final `done: true` line")

    async def aclose(self) -> None:
        try:
            await self._upstream.aclose()
        finally:
            if self._on_close is not None:
                self._on_close()
                self._on_close = None


def make_translator(kind: str, backend: str, body: dict[str, Any]) -> _Translator:
    options = body.get("stream_options")
    include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    if kind == "chat":
        return ChatTranslator(backend, include_usage)
    return CompletionTranslator(backend, include_usage)
