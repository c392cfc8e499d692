"""Writes an accepted stream to the client, keeps its books, and resumes it when a backend dies.

Each batch of events goes out the moment it arrives. On the way the relay counts content
chunks (the time of the first is the backend's time to first token, not its response
headers) and, on routes with `resume: true`, follows the text sent so far. When the backend
fails after the first byte, a resumable stream continues on another backend from that text
(`gateway/routing/resume.py`); otherwise, or if no backend can continue it, the client gets an
explicit SSE error event and no `[DONE]`, never a silent cut that looks complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gateway.api.asgi_io import Send
from gateway.api.disconnect import DisconnectWatch
from gateway.api.model_rename import ModelRenamer
from gateway.api.request_record import RequestRecord
from gateway.api.usage import StreamTally
from gateway.errors import GatewayError
from gateway.experiments.tap import ServeTap
from gateway.routing.cost import has_price, request_cost_usd
from gateway.routing.dispatcher import StreamResult
from gateway.routing.interfaces import Policy, RequestFeatures
from gateway.routing.resume import ResumedStreamRewriter, StreamProgress, continuation_request
from gateway.routing.table import Route
from gateway.schemas import RequestKind

if TYPE_CHECKING:
    from gateway.state import GatewayState

log = logging.getLogger("gateway.api")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
MAX_RESUMES = 2  # continuations per stream: a third failure ends it with an error event
_INTERNAL = GatewayError(500, "internal gateway error; see the gateway's logs", type="api_error",
                         code="internal_error")


class StreamRelay:
    """One streaming response, from its first backend to `data: [DONE]` or an error event."""

    def __init__(
        self,
        state: GatewayState,
        route: Route,
        kind: RequestKind,
        features: RequestFeatures,
        policy: Policy,
        client_model: str,
        started: float,
        *,
        record: RequestRecord,
        tap: ServeTap | None = None,
    ) -> None:
        self.state = state
        self.record = record  # the request's outcome as booked at its end: tokens, cost, first token
        self.route = route
        self.kind = kind
        self.features = features
        self.policy = policy
        self.rename = ModelRenamer(client_model)
        self.started = started
        self.tap = tap  # an experiment's record of this request: first token, tokens, cost, outcome
        self.progress = StreamProgress() if route.config.resume and kind != "embedding" else None

    def estimate_cost(self, result: StreamResult) -> float:
        """The cost known when the stream starts: the prompt, and the output it may run to."""
        backend = result.backend
        if not has_price(backend.config):
            return 0.0
        stats = self.state.routing.stats.get(backend.name)
        expected = self.features.max_output_tokens or round(stats.output_tokens or 0)
        return request_cost_usd(backend.config, stats, self.features.input_tokens, expected)

    async def run(
        self, send: Send, result: StreamResult, request_id: bytes, watch: DisconnectWatch,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Send the response: headers (with `extra_headers`), every event, then the end of the body."""
        try:
            await self._start(send, result, request_id, extra_headers)
        except BaseException:
            result.finish(ok=None)
            await result.stream.aclose()
            raise
        failed: list[str] = []
        rewrite: Callable[[bytes], bytes] | None = None
        while True:
            error = await self._segment(send, result, rewrite, request_id)
            if error is None:
                break
            failed.append(result.backend.name)
            progress = self.progress
            if progress is not None and progress.finished and not progress.done:
                # Every choice had finished: only the end marker was lost, and that is ours to send.
                await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
                break
            resumed = await self._resume(failed) if len(failed) <= MAX_RESUMES else None
            if resumed is None:
                await send({"type": "http.response.body", "body": error.sse_event(), "more_body": True})
                self.record.error = error.code or "stream_error"
                break
            result = resumed
            assert progress is not None
            rewrite = ResumedStreamRewriter(self.kind, progress).rewrite
        watch.finish()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _start(
        self, send: Send, result: StreamResult, request_id: bytes, extra_headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                *SSE_HEADERS,
                (b"x-gateway-backend", result.backend.name.encode()),
                (b"x-gateway-route-reason", result.reason.encode("ascii", "replace")),
                # A stream's price is known only at its end: the header is the estimate at dispatch,
                # the cost metric gets the counted one.
                (b"x-gateway-cost-usd", f"{self.estimate_cost(result):.8f}".encode()),
                (b"x-request-id", request_id),
                *extra_headers,
            ],
        })

    async def _segment(
        self, send: Send, result: StreamResult, rewrite: Callable[[bytes], bytes] | None, request_id: bytes
    ) -> GatewayError | None:
        """Relay one backend's events; the error that ended them early, or None when complete."""
        state, backend = self.state, result.backend
        tally = StreamTally(completions=self.kind == "completion")
        ttft_s: float | None = None
        progress, rename, tap, record = self.progress, self.rename, self.tap, self.record
        # The tally's count, inlined: this runs once per batch of every stream.
        field, empty = (b'"text":"', b'"text":""') if tally.completions else (b'content":"', b'content":""')
        outcome: bool | None = None

        def prepare(events: bytes) -> bytes:
            """One batch as the client gets it, accounted for on the way."""
            nonlocal ttft_s
            if rewrite is not None:
                events = rewrite(events)
            if progress is not None:
                progress.feed(events)
            found = events.count(field) - events.count(empty)
            tally.content_chunks += found
            if b'"usage":{' in events:
                tally.read_usage_chunk(events)
            if found and ttft_s is None:
                ttft_s = state.dispatcher.elapsed_since(result.sent_at)
                state.routing.stats.first_token(backend.name, ttft_s)
                now = time.perf_counter()
                state.metrics.observe_ttft(self.route.model, backend.name, now - self.started)
                if tap is not None and tap.first_token_at is None:
                    tap.first_token_at = now
                if record.first_token_at is None:
                    record.first_token_at = now
            return rename(events)

        try:
            out = prepare(result.first)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            async for events in result.rest:
                out = prepare(events)
                if out:  # a resumed stream's dropped role chunk leaves nothing to send
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            outcome = True
            return None
        except Exception as exc:
            outcome = False
            # Headers are gone: the only way left to tell the client is an error event.
            err = exc if isinstance(exc, GatewayError) else _INTERNAL
            if not isinstance(exc, GatewayError):
                log.exception("unexpected error streaming request %s", request_id.decode())
            log.warning("stream from %s failed after its first byte: %s", backend.name, err.message)
            state.metrics.observe_stream_error(self.route.model, backend.name)
            return err
        finally:
            # None (the client went away) unless the loop above decided.
            result.finish(ok=outcome, output_tokens=tally.output_tokens or None, ttft_s=ttft_s)
            await result.stream.aclose()
            prompt = tally.usage.prompt_tokens if tally.usage is not None else self.features.input_tokens
            cost = 0.0
            if has_price(backend.config):
                cost = request_cost_usd(backend.config, state.routing.stats.get(backend.name), prompt,
                                        tally.output_tokens)
                state.metrics.observe_cost(self.route.model, backend.name, self.features.tenant, cost)
            record.output_tokens += tally.output_tokens
            record.input_tokens = record.input_tokens or prompt
            record.cost_usd += cost
            if tap is not None:
                tap.finished_at = time.perf_counter()
                tap.ok = outcome  # the last segment decides: a stream resumed elsewhere reached its end
                tap.output_tokens += tally.output_tokens
                tap.input_tokens = tap.input_tokens or prompt
                tap.cost_usd += cost

    async def _resume(self, failed: list[str]) -> StreamResult | None:
        """The stream continued on another backend, or None when none can (or resume is off)."""
        progress = self.progress
        if progress is None or progress.done or progress.unsupported is not None:
            return None
        try:
            result = await self.state.dispatcher.open_stream(
                self.route, self.kind, self.features, policy=self.policy, exclude=failed,
                body_for=lambda backend: continuation_request(self.kind, self.features.body, progress, backend),
            )
        except GatewayError as err:
            log.warning("stream could not be resumed after %s failed: %s", ", ".join(failed), err.message)
            self.state.metrics.observe_resume(self.route.model, "failed")
            return None
        log.info("stream resumed on %s after %s failed", result.backend.name, ", ".join(failed))
        self.state.metrics.observe_resume(self.route.model, "resumed")
        return result
