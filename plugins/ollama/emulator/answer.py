"""Writing one generation as Ollama does: NDJSON lines while streaming, one object otherwise.

A stream is `done: false` objects, one per token, then a `done: true` object carrying
`done_reason` and the metrics (docs/api.md "Generate a completion", "Streaming responses";
server/routes.go streamResponse: `application/x-ndjson`, each object followed by "\\n").
Without streaming the handler gathers the same objects into one (routes.go, the
`req.Stream != nil && !*req.Stream` branch). Mid-stream faults are applied here because
only here is it known how many token lines have gone out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from plugins.emulation import EmulatorRuntime, Fault
from plugins.ollama.emulator.fake import Answer
from plugins.ollama.emulator.faults import (
    JSON_CONTENT_TYPE,
    NDJSON_CONTENT_TYPE,
    RUNNER_FAILED_MID_STREAM,
    error_response,
    mid_stream_at,
)
from plugins.ollama.emulator.wire import error_body, go_json, go_time

# (piece, tool calls or None) -> a `done: false` object
ChunkFactory = Callable[[str, Any], Any]
# (whole text, tool calls or None, done_reason, metrics) -> the `done: true` object
FinalFactory = Callable[[str, Any, str, dict[str, int]], Any]


class Timing:
    """The checkpoints Ollama measures its durations between (routes.go checkpointStart/Loaded)."""

    def __init__(self, load_ns: int) -> None:
        self.start_ns = time.monotonic_ns()
        self.load_ns = load_ns
        self.loaded_ns = 0
        self.first_ns = 0

    def loaded(self) -> None:
        self.loaded_ns = time.monotonic_ns()

    def first_token(self) -> None:
        if not self.first_ns:
            self.first_ns = time.monotonic_ns()

    def metrics(self, answer: Answer) -> dict[str, int]:
        """api.Metrics in ns; each at least 1 so none is dropped by omitempty, as on a real server."""
        end = time.monotonic_ns()
        loaded = self.loaded_ns or end
        first = self.first_ns or end
        return {
            "total_duration": max(end - self.start_ns + self.load_ns, 1),
            "load_duration": max(loaded - self.start_ns + self.load_ns, 1),
            "prompt_eval_count": answer.prompt_tokens,
            "prompt_eval_duration": max(first - loaded, 1),
            "eval_count": answer.eval_tokens,
            "eval_duration": max(end - first, 1),
        }


def now() -> str:
    return go_time()


async def _abort_mid_body(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Drop the connection with the body half-sent: what a crashed server looks like mid-response."""
    if request.transport is not None:
        request.transport.abort()
    return response


async def stream(request: web.Request, runtime: EmulatorRuntime, answer: Answer, timing: Timing,
                 chunk: ChunkFactory, final: FinalFactory) -> web.StreamResponse:
    """The NDJSON stream of `answer`, paced by the knobs, with any mid-stream fault."""
    response = web.StreamResponse(status=200)
    response.content_type = NDJSON_CONTENT_TYPE
    fault_at = mid_stream_at(runtime, len(answer.pieces))
    started = False
    for index, piece in enumerate(answer.pieces):
        await runtime.pace(index)
        timing.first_token()
        if not started:
            await response.prepare(request)
            started = True
        if index == fault_at and await _fault(request, response, runtime):
            return response
        await response.write(go_json(chunk(piece, answer.tool_calls)) + b"\n")
    if not started:
        await response.prepare(request)
    if fault_at == len(answer.pieces) and await _fault(request, response, runtime):
        return response
    # The closing object's text is empty: every piece went out in its own line (docs/api.md).
    await response.write(go_json(final("", None, answer.done_reason, timing.metrics(answer))) + b"\n")
    await response.write_eof()
    return response


async def _fault(request: web.Request, response: web.StreamResponse, runtime: EmulatorRuntime) -> bool:
    """Apply a mid-stream fault; True when the stream must end here."""
    fault = runtime.knobs.fault
    if fault is Fault.CUT_STREAM:
        await _abort_mid_body(request, response)
        return True
    if fault is Fault.STREAM_ERROR:
        # streamResponse writes the error as one more NDJSON object and ends the stream.
        await response.write(error_body(RUNNER_FAILED_MID_STREAM) + b"\n")
        await response.write_eof()
        return True
    if fault is Fault.MALFORMED_CHUNK:
        await response.write(b'{"model":"' + b"\xff" + b'","created_at":\n')
    return False


async def whole(request: web.Request, runtime: EmulatorRuntime, answer: Answer, timing: Timing,
                final: FinalFactory) -> web.StreamResponse:
    """One JSON object for a non-streaming request (paced as if streaming, since generation takes as long)."""
    for index in range(len(answer.pieces)):
        await runtime.pace(index)
        timing.first_token()
    fault = runtime.knobs.fault
    if fault is Fault.STREAM_ERROR:
        return error_response(500, RUNNER_FAILED_MID_STREAM)
    body = go_json(final("".join(answer.pieces), answer.tool_calls, answer.done_reason, timing.metrics(answer)))
    if fault is Fault.MALFORMED_CHUNK:
        body = body[: len(body) // 2]
    response = web.StreamResponse(status=200)
    response.content_type = JSON_CONTENT_TYPE.split(";")[0]
    response.charset = "utf-8"
    response.content_length = len(body) if fault is not Fault.CUT_STREAM else len(body) * 2
    await response.prepare(request)
    if fault is Fault.CUT_STREAM:
        await response.write(body[: len(body) // 2])
        return await _abort_mid_body(request, response)
    await response.write(body)
    await response.write_eof()
    return response


def json_response(value: Any, status: int = 200) -> web.Response:
    """A gin c.JSON answer."""
    response = web.Response(status=status, body=go_json(value))
    response.content_type = "application/json"
    response.charset = "utf-8"
    return response
