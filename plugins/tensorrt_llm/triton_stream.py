"""Triton's generate_stream SSE as an OpenAI chunk stream.

Triton frames every response as `data: <json>\\n\\n` and ends the stream by ending the
chunked body: there is no end marker (server src/http_server.cc, FinalizeResponse and
EndResponseCallback). A failure after the first response arrives as an event of its own,
`data: {"error": "..."}`, under the 200 already sent (docs/protocol/extension_generate.md).
So: a body cut before its end, an unreadable event and an error event each raise a
`GatewayError`; a clean end becomes the final chunk, the usage chunk and `data: [DONE]`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from gateway.errors import GatewayError, backend_failed
from gateway.sse import DONE_EVENT, SSEFramer
from gateway.upstream import UpstreamError, UpstreamStream
from plugins.openai_compat.errors import transport_error
from plugins.tensorrt_llm.stop_words import StopTrimmer
from plugins.tensorrt_llm.triton_request import TritonCall
from plugins.tensorrt_llm.triton_response import Accounting, GenerateOutput, decode_output, first, response_id

_encode = msgspec.json.Encoder().encode


class ChunkWriter:
    """Turns the reply's text pieces into OpenAI chunks of one kind (chat or completion)."""

    def __init__(self, kind: str, call: TritonCall, model: str, include_usage: bool) -> None:
        self.kind = kind
        self.call = call
        self.include_usage = include_usage
        self.accounting = Accounting(call.prompt)
        self._trimmer = StopTrimmer(call.stops)
        self._head: dict[str, Any] = {
            "id": response_id("chatcmpl" if kind == "chat" else "cmpl"),
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        self._started = False
        self._prompt_checked = False

    def _chunk(self, text: str | None, finish: str | None, *, role: bool = False) -> bytes:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return b"data: " + _encode({**self._head, "choices": [choice]}) + b"\n\n"

    def event(self, output: GenerateOutput) -> bytes:
        """The chunks for one Triton response; maybe none while a stop string may be forming."""
        raw = first(output.text_output)
        text = raw if isinstance(raw, str) else ""
        if not self._prompt_checked:
            # Without exclude_input_in_output the first response may repeat the prompt.
            self._prompt_checked = True
            if self.call.prompt and text.startswith(self.call.prompt):
                text = text[len(self.call.prompt):]
        self.accounting.add(output, text)
        released = self._trimmer.feed(text)
        out = b""
        if not self._started:
            self._started = True
            if self.kind == "chat":
                out += self._chunk(None, None, role=True)
            if self.call.echo:
                released = self.call.echo + released
        if released:
            out += self._chunk(released, None)
        return out

    def finish(self) -> bytes:
        """The last text, the finish reason, usage if asked for, then [DONE]."""
        out = b""
        rest = self._trimmer.flush()
        if not self._started:  # Triton ended the stream without a single response
            if self.kind == "chat":
                out += self._chunk(None, None, role=True)
            rest = self.call.echo + rest
        finish = self.accounting.finish_reason(self.call, self._trimmer.stopped)
        out += self._chunk(rest or None, finish)
        if self.include_usage:
            out += b"data: " + _encode({**self._head, "choices": [], "usage": self.accounting.usage()}) + b"\n\n"
        return out + DONE_EVENT


def _payload(event: bytes) -> bytes | None:
    """The data of one SSE event (comments and other fields ignored)."""
    data = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(data) if data else None


class TritonEventStream:
    """Yields OpenAI SSE events translated from a Triton generate_stream response."""

    def __init__(self, backend: str, upstream: UpstreamStream, writer: ChunkWriter) -> None:
        self._backend = backend
        self._upstream = upstream
        self._writer = writer

    async def __aiter__(self) -> AsyncIterator[bytes]:
        framer = SSEFramer()
        try:
            async for data in self._upstream.chunks():
                events = framer.feed(data)
                if not events:
                    continue
                out = b""
                for event in events.split(b"\n\n")[:-1]:
                    payload = _payload(event)
                    if payload is None:
                        continue
                    try:
                        output = decode_output(self._backend, payload)
                    except GatewayError:
                        if out:
                            yield out
                        raise
                    if output.error is not None:
                        if out:
                            yield out  # what came before the error is still the client's
                        raise backend_failed(self._backend, f"Triton error event: {output.error}")
                    out += self._writer.event(output)
                if out:
                    yield out
        except UpstreamError as err:
            raise transport_error(self._backend, err) from err
        if framer.pending.strip():
            raise backend_failed(self._backend, "Triton stream ended inside an event")
        yield self._writer.finish()

    async def aclose(self) -> None:
        await self._upstream.aclose()
