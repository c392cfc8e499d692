"""What one request in an experiment did, gathered on its way through the handler.

A `ServeTap` exists only for requests on a route with an experiment or a shadow, so routes without
one pay nothing. The handler's `send` is wrapped once: the wrapper adds the `x-gateway-experiment`
header to whatever response leaves (a backend's answer, a cache hit, an error) and, for a request
being mirrored, keeps a bounded copy of the body so the shadow can compare answers. The stream
relay and the non-stream path fill in the timings, tokens and cost.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from gateway.cache.record import StreamRecorder
from gateway.cache.replay import replay_body
from gateway.experiments.arm_totals import ArmObservation
from gateway.experiments.similarity import answer_text

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
MAX_CAPTURE_BYTES = 1024 * 1024  # a longer answer is not compared (its latency still counts)


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: Any = None  # only looked at for presence; rare, so decoding them costs nothing typical
    function_call: Any = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    text: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    error: Any = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


def _stream_text(kind: str, raw: bytes) -> str | bool | None:
    """The first choice's text of a complete SSE stream; None for a cut or failed one; False when it
    carries tool calls, which only the full assembly renders (`answer_text`'s form)."""
    parts: list[str] = []
    done = False
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            continue
        try:
            chunk = _decode_chunk(payload)
        except msgspec.DecodeError:
            return None
        if chunk.error is not None:
            return None
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            if kind == "completion":
                parts.append(choice.text or "")
            elif choice.delta is not None:
                if choice.delta.tool_calls is not None or choice.delta.function_call is not None:
                    return False
                parts.append(choice.delta.content or "")
    return "".join(parts) if done else None


def answer_of(kind: str, raw: bytes, *, stream: bool) -> str | None:
    """The text of an answer as sent: a JSON body, or an SSE stream assembled (None if cut or failed)."""
    if stream:
        # The common case, plain text, straight from the chunks: assembling whole answers cost a
        # mirrored 20-chunk stream about 0.2 ms a side.
        text = _stream_text(kind, raw)
        if not isinstance(text, bool):
            return text
        recorder = StreamRecorder(kind, max_bytes=MAX_CAPTURE_BYTES)
        recorder.feed(raw)
        if not recorder.done or recorder.failed or recorder.too_large:
            return None
        try:
            raw = replay_body(recorder.finish("", estimated_prompt_tokens=0, now=time.time()))
        except ValueError:
            return None
    return answer_text(kind, raw)


class ServeTap:
    """The request's outcome as the client saw it: one per experiment or shadow request.

    Times are `time.perf_counter()` values. `dispatched` turns True when the request went to a
    backend (not a cache hit, not a 400 before dispatch); `ok` is False when the backend failed,
    mid-stream included.
    """

    __slots__ = ("_capture", "_captured", "_captured_bytes", "_headers", "cost_usd", "dispatched",
                 "finished_at", "first_token_at", "input_tokens", "ok", "output_tokens", "started", "status",
                 "stream")

    def __init__(self, started: float, *, stream: bool, headers: list[tuple[bytes, bytes]], capture: bool) -> None:
        self.started = started
        self.stream = stream
        self._headers = headers
        self._capture = capture
        self._captured: list[bytes] = []
        self._captured_bytes = 0
        self.dispatched = False
        self.ok: bool | None = None
        self.status = 0
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0

    def wrap(self, send: Send) -> Send:
        """`send` with the experiment header added to the response start, and the body kept when mirroring."""
        headers, capture = self._headers, self._capture

        async def tapped(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                self.status = message.get("status", 0)
                if headers:
                    message["headers"] = [*message.get("headers", ()), *headers]
            elif capture and kind == "http.response.body":
                self._keep(message.get("body", b""))
            await send(message)

        return tapped

    def _keep(self, body: bytes) -> None:
        if not body or self._captured_bytes > MAX_CAPTURE_BYTES:
            return
        self._captured_bytes += len(body)
        if self._captured_bytes > MAX_CAPTURE_BYTES:
            self._captured.clear()  # too long to compare; say so by answering None
            return
        self._captured.append(body)

    def answer(self, kind: str) -> str | None:
        """The served answer's text (the stream assembled), or None when it was not kept or not readable."""
        if not self._capture or self.status != 200 or not self._captured or self._captured_bytes > MAX_CAPTURE_BYTES:
            return None
        return answer_of(kind, b"".join(self._captured), stream=self.stream)

    def observation(self, experiment: str, arm: str, *, now: float | None = None,
                    exact: bool | None = None, similarity: float | None = None) -> ArmObservation:
        """This request as one observation of `arm`; `now` ends it when the handler did not."""
        end = self.finished_at if self.finished_at is not None else (time.perf_counter() if now is None else now)
        ok = self.ok is not False and self.status == 200
        ttft = self.first_token_at - self.started if self.first_token_at is not None else None
        tpot = None
        if self.first_token_at is not None and self.output_tokens > 1:
            tpot = (end - self.first_token_at) / (self.output_tokens - 1)
        return ArmObservation(experiment, arm, ok, ttft_s=ttft, tpot_s=tpot, e2e_s=end - self.started,
                              input_tokens=self.input_tokens, output_tokens=self.output_tokens,
                              cost_usd=self.cost_usd, exact=exact, similarity=similarity)
