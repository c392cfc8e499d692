"""Ollama's failures as the gateway's errors, with Ollama's own message.

Ollama answers every error as `{"error": "message"}` (server/routes.go). Its classes:
400 for a request it cannot serve (bad JSON field, an over-long prompt with shift off, a
model lacking a capability), 404 for a model that is not pulled ("model 'x' not found";
older servers: `model "x" not found, try pulling it first`), 503 when its queue is full
(server/sched.go ErrMaxQueue), 429 from a rate-limited remote model, and 500 for a runner
that failed. A 404 with a non-JSON body is gin's "404 page not found": the server has no
such route (an Ollama too old for `/api/embed`, or not Ollama at all).
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.backend import BackendUnavailable
from gateway.errors import GatewayError, backend_failed


def server_message(body: bytes) -> tuple[str, bool]:
    """(message, whether the body was Ollama's JSON error object)."""
    try:
        data: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body.decode("utf-8", "replace").strip()[:500] or "no error message", False
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"], True
    return body.decode("utf-8", "replace")[:500], False


def http_error(backend: str, model: str, status: int, body: bytes, path: str,
               retry_after: str | None = None) -> GatewayError:
    """A non-200 answer from Ollama as the gateway's error for it."""
    message, is_ollama_error = server_message(body)
    if status == 404:
        if not is_ollama_error:
            return backend_failed(backend, f"HTTP 404 for {path}: {message} (is the server an Ollama with this "
                                           "API route?)")
        return GatewayError(
            404,
            f"backend '{backend}': model '{model}' is not available on its Ollama server ({message}); "
            f"pull it there with `ollama pull {model}`",
            param="model",
            code="model_not_found",
        )
    if status in (429, 503):
        # Busy, not broken: another backend may serve it, and this one stays in rotation.
        busy = BackendUnavailable(backend, f"HTTP {status}: {message}", mark_down=False, throttled=True)
        if retry_after:
            busy.headers["retry-after"] = retry_after
        return busy
    if status >= 500:
        failed = BackendUnavailable(backend, f"HTTP {status}: {message}", mark_down=False)
        failed.status, failed.code = 502, "backend_error"  # the server's own failure: a bad gateway
        return failed
    if status in (401, 403):
        # The server (or a proxy before it) refused the gateway's credentials: not the client's fault.
        return backend_failed(backend, f"HTTP {status} (check the backend's api_key): {message}")
    return GatewayError(status, f"backend '{backend}': {message}", type="invalid_request_error",
                        code="backend_rejected_request")
