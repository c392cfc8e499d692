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

from gateway.cache.record import StreamRecorder, stream_failed
from gateway.cache.replay import replay_body
from gateway.experiments.arm_totals import ArmObservation, timed_observation
from gateway.experiments.similarity import answer_text
from gateway.routing.resume import StreamProgress

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
MAX_CAPTURE_BYTES = 1024 * 1024  # a longer answer is not compared (its latency still counts)


def answer_of(kind: str, raw: bytes, *, stream: bool) -> str | None:
    """The text of an answer as sent: a JSON body, or an SSE stream assembled (None if cut or failed)."""
    if stream:
        # The common case, plain text, straight from the chunks (the resume machinery's reader):
        # assembling whole answers cost a mirrored 20-chunk stream about 0.2 ms a side. Tool calls
        # and reasoning, which only the full assembly renders in `answer_text`'s form, go that way.
        progress = StreamProgress()
        progress.feed(raw)
        if not progress.done or stream_failed(raw):
            return None
        if progress.unsupported is None:
            first = progress.choices.get(0)
            return first.text if first is not None else ""
        recorder = StreamRecorder(kind, max_bytes=MAX_CAPTURE_BYTES)
        recorder.feed(raw)
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
        return timed_observation(experiment, arm, self.ok is not False and self.status == 200, started=self.started,
                                 first_token_at=self.first_token_at, finished_at=end, input_tokens=self.input_tokens,
                                 output_tokens=self.output_tokens, cost_usd=self.cost_usd, exact=exact,
                                 similarity=similarity)
