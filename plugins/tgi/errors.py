"""Turning TGI's failures into the gateway's errors, keeping the server's own message.

TGI reports errors as `{"error": "...", "error_type": "..."}` (`ErrorResponse`, router/src/lib.rs)
with these statuses (`impl From<InferError> for (StatusCode, Json<ErrorResponse>)`, server.rs):
422 validation / template_error / tool_error, 424 generation, 429 overloaded, 500
incomplete_generation. Its Messages API stream reports them as an event
`{"error": {"message": "...", "http_status_code": 422}}` (`into_openai_event`, infer/mod.rs), and
`/generate_stream` as an `ErrorResponse` event, both after a 200. axum itself answers 400 (bad
JSON), 415 (no JSON content type), 413 (body too large) and 422 (wrong types) in plain text.
"""

from __future__ import annotations

import re

import msgspec

from gateway.backend import BackendUnavailable
from gateway.errors import GatewayError, backend_failed

# TGI's own field names in validation messages (router/src/validation.rs) -> the OpenAI parameter
# the client sent; a chat's fields went through `ChatRequest::try_into_generate` first.
_PARAM_NAMES = {
    "completion": {"inputs": "prompt", "max_new_tokens": "max_tokens", "top_n_tokens": "logprobs"},
    "chat": {"inputs": "messages", "max_new_tokens": "max_tokens", "top_n_tokens": "top_logprobs",
             "repetition_penalty": "presence_penalty", "grammar": "response_format"},
}
_BACKTICKED = re.compile(r"`([a-z_]+)`")
# "`inputs` must have less than 4096 tokens" / "`inputs` tokens + `max_new_tokens` must be <= 4096"
_TOO_LONG = ("`inputs` must have less than", "`inputs` tokens + `max_new_tokens` must be")


def _message(body: bytes) -> tuple[str, str | None]:
    """(message, error_type) from a TGI error body, a chat error event, or axum's plain text."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body.decode("utf-8", "replace").strip()[:500] or "no error message", None
    if isinstance(data, dict):
        error = data.get("error")
        error_type = data.get("error_type")
        if isinstance(error, dict):  # the Messages API's error event, or an OpenAI-shaped body
            return str(error.get("message") or error), error.get("type") if isinstance(error.get("type"), str) else None
        if error is not None:
            return str(error), error_type if isinstance(error_type, str) else None
    return body.decode("utf-8", "replace")[:500], None


def _param(message: str, kind: str) -> str | None:
    """The OpenAI parameter a TGI validation message is about."""
    match = _BACKTICKED.search(message)
    if match is None:
        return None
    return _PARAM_NAMES.get(kind, {}).get(match.group(1), match.group(1))


def validation_error(backend: str, message: str, kind: str) -> GatewayError:
    """TGI refused the request's values: a 400 naming the parameter, with TGI's message."""
    if any(marker in message for marker in _TOO_LONG):
        param = "max_tokens" if "max_new_tokens" in message else ("messages" if kind == "chat" else "prompt")
        return GatewayError(400, f"backend '{backend}': {message}", param=param, code="context_length_exceeded")
    if "is not supported" in message or "not allowed for this endpoint" in message:
        # e.g. "grammar is not supported" (a server started with --disable-grammar-support)
        return GatewayError(422, f"backend '{backend}': {message}", param=_param(message, kind),
                            code="unsupported_parameter")
    return GatewayError(400, f"backend '{backend}': {message}", param=_param(message, kind))


def overloaded(backend: str, message: str, retry_after: str | None = None) -> BackendUnavailable:
    """TGI is at `--max-concurrent-requests`: busy, not down, so another backend may serve it."""
    # Overload is TGI's 429: alive and busy, so its breaker stays closed.
    error = BackendUnavailable(backend, f"overloaded: {message}", mark_down=False, throttled=True)
    if retry_after:
        error.headers["retry-after"] = retry_after
    return error


def classify(backend: str, status: int, message: str, error_type: str | None, kind: str,
             retry_after: str | None = None) -> GatewayError:
    """The gateway error for one TGI failure, from its status and `error_type`."""
    if error_type == "overloaded" or status == 429 or message.startswith("Model is overloaded"):
        return overloaded(backend, message, retry_after)
    if error_type == "validation" or message.startswith("Input validation error"):
        return validation_error(backend, message, kind)
    if error_type in ("generation", "incomplete_generation", "incomplete_generation_stream") or status == 424:
        # The server failed while generating (CUDA OOM, a shard crashed): its fault, not the request's.
        return backend_failed(backend, message)
    if status >= 500:
        unavailable = BackendUnavailable(backend, f"HTTP {status}: {message}", mark_down=False)
        if retry_after:
            unavailable.headers["retry-after"] = retry_after
        if status in (500, 501):  # the server's own fault, not overload: a bad gateway
            unavailable.status, unavailable.code = 502, "backend_error"
        return unavailable
    if status == 404:
        # A TGI without this route (the Messages API needs 1.4+) or a wrong URL: the config's fault.
        return backend_failed(backend, f"HTTP 404 from the server ({message}); is the url a TGI server?")
    if status in (401, 403):
        return backend_failed(backend, f"HTTP {status}: the server refused the gateway's credentials ({message})")
    if status in (413, 415):
        return GatewayError(status, f"backend '{backend}': {message}")
    # 400 (axum: not JSON), 422 (axum: wrong types; TGI: template/tool errors) and the rest.
    return GatewayError(400, f"backend '{backend}': {message}", param=_param(message, kind))


def http_error(backend: str, status: int, body: bytes, kind: str, retry_after: str | None = None) -> GatewayError:
    """A non-200 answer from TGI (with its Retry-After, if it sent one)."""
    message, error_type = _message(body)
    return classify(backend, status, message, error_type, kind, retry_after)


def event_error(backend: str, error: str | dict[str, object], error_type: str | None, kind: str) -> GatewayError:
    """An error TGI sent as a stream event after answering 200."""
    if isinstance(error, dict):
        message = str(error.get("message", error))
        raw_status = error.get("http_status_code", 422)
        status = raw_status if isinstance(raw_status, int) else 422
    else:
        message, status = error, 500
    if error_type is None and isinstance(error, dict):
        # The Messages API labels every error 422; its message says what it really was.
        status = 500
    return classify(backend, status, message, error_type, kind)
