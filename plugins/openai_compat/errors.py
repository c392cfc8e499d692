"""Turning an OpenAI-compatible server's failures into the gateway's errors."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.backend import BackendUnavailable
from gateway.errors import GatewayError, backend_failed, backend_timeout
from gateway.upstream import UpstreamConnectError, UpstreamError, UpstreamStream, UpstreamTimeout


def error_message(body: bytes) -> tuple[str, str | None, str | None]:
    """(message, param, code) from an error body in OpenAI's shape or common variants."""
    try:
        data: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:500] or "no error message", None, None)
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail") or msgspec.json.encode(err).decode()
            param, code = err.get("param"), err.get("code")
            return (str(message), param if isinstance(param, str) else None,
                    str(code) if isinstance(code, (str, int)) else None)
        if isinstance(err, str):
            return (err, None, None)
        detail = data.get("detail")
        if detail is not None:
            return (str(detail), None, None)
    return (body.decode("utf-8", "replace")[:500], None, None)


def http_error(backend: str, status: int, body: bytes, retry_after: str | None = None) -> GatewayError:
    """A non-200 answer: 4xx passes on with the server's message, 5xx may be retried elsewhere.

    A refusal's Retry-After travels on the error, so the gateway's own answer can pass it on.
    """
    message, param, code = error_message(body)
    if status >= 500 or status == 429:
        unavailable = BackendUnavailable(backend, f"HTTP {status}: {message}", mark_down=False,
                                         throttled=status == 429)
        if retry_after:
            unavailable.headers["retry-after"] = retry_after
        # 500/501 are the server's own fault, not overload: report them as a bad gateway.
        if status in (500, 501):
            unavailable.status, unavailable.code = 502, "backend_error"
        return unavailable
    error_type = "invalid_request_error" if status < 500 else "api_error"
    return GatewayError(status, f"backend '{backend}': {message}", type=error_type, param=param, code=code)


async def refusal_body(upstream: UpstreamStream) -> bytes:
    """The error body of a stream the server answered with a non-200 status; the stream is closed."""
    try:
        return await upstream.read()
    except UpstreamError:
        return b""
    finally:
        await upstream.aclose()


def transport_error(backend: str, err: UpstreamError) -> GatewayError:
    """A connection-level failure, before or during a response."""
    if isinstance(err, UpstreamTimeout):
        if err.phase == "connect":
            return BackendUnavailable(backend, f"connect timeout after {err.seconds:g}s")
        return backend_timeout(backend, "the first token" if err.phase == "first byte" else "the response",
                               err.seconds)
    if isinstance(err, UpstreamConnectError):
        return BackendUnavailable(backend, f"connection failed: {err}")
    return backend_failed(backend, str(err))
