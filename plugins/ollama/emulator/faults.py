"""The shared fault knobs as Ollama shows them: its status codes, its error bodies, its framing.

Messages are Ollama's own: a crashed runner (llm/llama_server.go), a full queue
(server/sched.go ErrMaxQueue), a rate limit (server/routes_generate_test.go "status error
streaming"), a runner dying mid-stream (llm/llama_server.go). Faults apply to the inference
routes only, so the control routes (/, /api/version, /api/tags, /api/ps) keep telling a test
that the server is up while its requests fail.
"""

from __future__ import annotations

from aiohttp import web

from plugins.emulation import EmulatorRuntime, Fault
from plugins.emulation.runtime import refuse
from plugins.ollama.emulator.wire import error_body

RUNNER_CRASHED = "llama-server process has terminated: exit status 2"
SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"
RATE_LIMITED = "rate limit exceeded"
RUNNER_FAILED_MID_STREAM = "an error was encountered while running the model: unexpected EOF"

# gin's c.JSON content type (github.com/gin-gonic/gin render/json.go).
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
# server/routes.go streamResponse.
NDJSON_CONTENT_TYPE = "application/x-ndjson"

MID_STREAM = (Fault.CUT_STREAM, Fault.MALFORMED_CHUNK, Fault.STREAM_ERROR)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """An Ollama error: `{"error": message}` with gin's JSON content type."""
    response = web.Response(status=status, body=error_body(message), headers=headers)
    response.content_type = "application/json"
    response.charset = "utf-8"
    return response


async def before_answer(request: web.Request, runtime: EmulatorRuntime) -> web.StreamResponse | None:
    """The response for a fault that strikes before the first byte, or None to go on."""
    fault = runtime.knobs.fault
    if fault is Fault.REFUSE:
        return refuse(request)
    if fault is Fault.HANG:
        await runtime.hang_if_asked()
    if fault is Fault.HTTP_500:
        return error_response(500, RUNNER_CRASHED)
    if fault is Fault.HTTP_503:
        return error_response(503, SERVER_BUSY)
    if fault is Fault.HTTP_429:
        # Ollama itself sends no Retry-After; the shared knob promises one, so a client's
        # back-off path can be tested.
        return error_response(429, RATE_LIMITED, {"Retry-After": str(runtime.knobs.retry_after_s)})
    return None


def mid_stream_at(runtime: EmulatorRuntime, pieces: int) -> int | None:
    """The piece index before which a mid-stream fault strikes (at the latest before the final line)."""
    if runtime.knobs.fault not in MID_STREAM:
        return None
    return min(max(runtime.knobs.fault_after_tokens, 0), pieces)
