"""Serving one chat request by speculative decoding: verified target tokens as an OpenAI response.

The chat is rendered into target ids once; the decoder commits tokens round by round; each commit
is detokenized (IncrementalText: held back while a character or a stop string is incomplete) and
sent as one chat.completion.chunk, so the client only ever sees verified tokens (reference §5.5).
`usage.completion_tokens` counts committed tokens (up to the one completing a stop string), and the
decoder's counters travel in the `x-gateway-speculative` header (the whole count for a JSON answer;
the pair only for a stream, whose headers leave first) and in an `x_speculative` field of the final
chunk or the completion object.

Until the first token is streamed nothing has been sent, so a failure there (the target refusing
token ids, the tokenizer away), or anywhere in a JSON answer, raises `SpeculationFallback` and the
handler serves the request plainly on the route, from the start; a stream that fails after its first
byte ends with an SSE error event (`failed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import msgspec

from gateway.api.asgi_io import Send, send_bytes
from gateway.api.stream_relay import SSE_HEADERS
from gateway.errors import GatewayError
from gateway.speculative.coordinator import CommitEvent
from gateway.speculative.eligibility import max_new_tokens, stop_strings
from gateway.speculative.interfaces import TargetFailed
from gateway.speculative.pair import RequestSpeculation, SpeculativePair
from gateway.speculative.prefetch import prefetch
from gateway.speculative.probe import TokenizerError
from gateway.speculative.text_stream import IncrementalText

log = logging.getLogger("gateway.speculative")

# A request that names no limit stops at EOS or after this many tokens (target-alone would run to
# the context's end; a gateway must not let one request decode forever).
DEFAULT_MAX_TOKENS = 4096
_DONE = b"data: [DONE]\n\n"


class SpeculationFallback(Exception):
    """Nothing was sent yet and speculation cannot go on: serve the request plainly (`reason`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


class SpeculativeResponse:
    """One request's speculative answer, streamed or whole."""

    def __init__(self, pair: SpeculativePair, spec: RequestSpeculation, body: dict[str, Any], *,
                 client_model: str, request_id: bytes, include_usage: bool) -> None:
        assert pair.codec is not None, "a pair hands out requests only once its clients are built"
        self.pair = pair
        self.codec = pair.codec
        self.spec = spec
        self.body = body
        self.client_model = client_model
        self.request_id = request_id
        self.include_usage = include_usage
        self.id = "chatcmpl-" + request_id.decode("ascii", "replace")[-24:]
        self.created = int(time.time())
        self.output: list[int] = []
        self.prompt_tokens = 0
        self.first_token_at: float | None = None
        self.failed = False  # a stream that ended with an error event after its first byte

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        return _event({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.client_model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra,
        })

    async def _first_event(self, events: Any) -> CommitEvent | None:
        try:
            return await anext(events)
        except StopAsyncIteration:
            return None
        except TargetFailed as err:
            raise SpeculationFallback("target_failed", str(err)) from err
        except TokenizerError as err:
            raise SpeculationFallback("tokenizer_failed", str(err)) from err

    async def _prompt(self) -> list[int]:
        try:
            return await self.codec.render_chat(self.body["messages"])
        except TokenizerError as err:
            raise SpeculationFallback("tokenizer_failed", str(err)) from err

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def _finish_reason(self, stopped: bool, limit: int) -> str:
        if stopped or self.spec.decoder.finished_on_eos:
            return "stop"
        return "length" if len(self.output) >= limit else "stop"

    def _start(self) -> tuple[int, IncrementalText]:
        """The request's token limit, and its text stream (stop strings held back)."""
        limit = max_new_tokens(self.body, DEFAULT_MAX_TOKENS)
        text = IncrementalText(self.codec, self.spec.decoder.eos_ids, stop_strings(self.body))
        return limit, text

    async def _drain(self, first: CommitEvent | None, events: AsyncIterator[CommitEvent], text: IncrementalText,
                     emit: Callable[[str], Awaitable[None]]) -> tuple[bool, int]:
        """Commit events to text through `emit` until the end or a stop string: (stopped, completion tokens)."""
        event = first
        while event is not None:
            self.output.extend(event.tokens)
            step = await text.push(event.tokens)
            if step.text:
                await emit(step.text)
            if step.stopped:
                return True, await text.tokens_through_stop(self.output)
            event = await anext(events, None)
        step = await text.finish()
        if step.text:
            await emit(step.text)
        if step.stopped:
            return True, await text.tokens_through_stop(self.output)
        return False, len(self.output)

    async def stream(self, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
        """Answer as SSE: headers and the role chunk once the first token is committed."""
        prompt = await self._prompt()
        self.prompt_tokens = len(prompt)
        limit, text = self._start()

        async def emit(content: str) -> None:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            await send({"type": "http.response.body", "more_body": True, "body": self._chunk({"content": content})})

        async with aclosing(prefetch(self.spec.decoder.run(prompt, limit))) as events:
            first = await self._first_event(events)
            await send({"type": "http.response.start", "status": 200, "headers": [
                *SSE_HEADERS, *headers, (b"x-gateway-speculative", f"pair={self.pair.name}".encode())]})
            await send({"type": "http.response.body", "more_body": True,
                        "body": self._chunk({"role": "assistant", "content": ""})})
            try:
                stopped, completion_tokens = await self._drain(first, events, text, emit)
            except (TargetFailed, TokenizerError) as err:
                # Headers are gone: the stream ends with an error event, never a silent cut.
                log.warning("speculative stream %s failed after its first byte: %s", self.request_id.decode(), err)
                error = GatewayError(502, f"speculative decoding failed mid-stream: {err}", type="api_error",
                                     code="backend_error")
                await send({"type": "http.response.body", "body": error.sse_event(), "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                self.failed = True
                return
        self.output = self.output[:completion_tokens]
        tail = self._chunk({}, self._finish_reason(stopped, limit), x_speculative=self.spec.stats())
        if self.include_usage:
            tail += _event({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                            "model": self.client_model, "choices": [], "usage": self._usage(completion_tokens)})
        await send({"type": "http.response.body", "body": tail + _DONE, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def whole(self, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
        """Answer as one chat.completion JSON object."""
        prompt = await self._prompt()
        self.prompt_tokens = len(prompt)
        limit, text = self._start()
        parts: list[str] = []

        async def emit(content: str) -> None:
            parts.append(content)

        async with aclosing(prefetch(self.spec.decoder.run(prompt, limit))) as events:
            first = await self._first_event(events)
            try:
                stopped, completion_tokens = await self._drain(first, events, text, emit)
            except TargetFailed as err:
                # Nothing was sent: the route answers the request plainly, from the start.
                raise SpeculationFallback("target_failed", str(err)) from err
            except TokenizerError as err:
                raise SpeculationFallback("tokenizer_failed", str(err)) from err
        self.output = self.output[:completion_tokens]
        payload = {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.client_model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                         "logprobs": None, "finish_reason": self._finish_reason(stopped, limit)}],
            "usage": self._usage(completion_tokens),
            "x_speculative": self.spec.stats(),
        }
        await send_bytes(send, 200, msgspec.json.encode(payload), [
            (b"content-type", b"application/json"), *headers,
            (b"x-gateway-speculative", self.spec.header_value().encode()),
        ])
