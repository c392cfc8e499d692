"""Triton's failures as the gateway's errors.

Triton answers every failure with `{"error": "<message>"}` (triton-inference-server/server
src/http_server.cc, EVBufferAddErrorJson) and a status from the error's code
(HttpCodeFromError: INTERNAL 500, NOT_FOUND 404, UNAVAILABLE 503, UNSUPPORTED 501,
INVALID_ARG/UNKNOWN/ALREADY_EXISTS/CANCELLED 400). On generate_stream the same object comes
as an SSE event (`data: {"error": ...}`), with the status of the first response.
"""

from __future__ import annotations

from gateway.errors import GatewayError
from plugins.openai_compat.errors import error_message, http_error


def _strip_sse(body: bytes) -> bytes:
    """The JSON of an error that arrived as the first (and only) SSE event of a stream."""
    stripped = body.strip()
    if stripped.startswith(b"data:"):
        return stripped[5:].split(b"\n", 1)[0].strip()
    return stripped


def triton_http_error(backend: str, model_name: str, status: int, body: bytes,
                      retry_after: str | None = None) -> GatewayError:
    """A non-200 generate answer: 404 names the Triton model, the rest follow the common mapping."""
    body = _strip_sse(body)
    if status == 404:
        message, _, _ = error_message(body)
        return GatewayError(
            404,
            f"backend '{backend}': Triton model '{model_name}' not found: {message}",
            param="model",
            code="model_not_found",
        )
    # 400 passes on with Triton's message; 500/501 -> 502; 503 (UNAVAILABLE, e.g. "Exceeds
    # maximum queue size") and 429 -> BackendUnavailable(mark_down=False) so the router falls back.
    return http_error(backend, status, body, retry_after)
