"""The gateway's error model: every failure leaves as an OpenAI-style error body.

A `GatewayError` carries everything the HTTP layer needs (status, message, type, param,
code, extra headers), so code deep in routing or a plugin can raise one and the API layer
only has to encode it.
"""

from __future__ import annotations

import msgspec


class ErrorDetail(msgspec.Struct, omit_defaults=False):
    """The `error` object of OpenAI's error body."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct):
    """`{"error": {...}}` exactly as OpenAI's API returns it."""

    error: ErrorDetail


_encoder = msgspec.json.Encoder()


class GatewayError(Exception):
    """An error with an HTTP status and an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        """The JSON body of this error."""
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return _encoder.encode(ErrorBody(error=detail))

    def sse_event(self) -> bytes:
        """This error as one SSE event, for a stream that fails after its first byte."""
        return b"data: " + self.body() + b"\n\n"

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.message!r}, code={self.code!r})"


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    """400: the request itself is malformed."""
    return GatewayError(400, message, param=param, code=code)


def unsupported_parameter(param: str, backend: str, plugin: str) -> GatewayError:
    """422: the chosen backend cannot honour a parameter, so it is refused rather than dropped."""
    return GatewayError(
        422,
        f"parameter '{param}' is not supported by backend '{backend}' (plugin {plugin})",
        param=param,
        code="unsupported_parameter",
    )


def model_not_found(model: str) -> GatewayError:
    """404: no route serves this model name."""
    return GatewayError(
        404,
        f"The model '{model}' does not exist or no route serves it",
        param="model",
        code="model_not_found",
    )


def backend_timeout(backend: str, what: str, seconds: float) -> GatewayError:
    """504: the backend did not answer in time."""
    return GatewayError(
        504,
        f"backend '{backend}' timed out waiting for {what} after {seconds:g}s",
        type="api_error",
        code="backend_timeout",
    )


def backend_failed(backend: str, detail: str) -> GatewayError:
    """502: the backend answered with something unusable (5xx, bad body, cut stream)."""
    return GatewayError(
        502, f"backend '{backend}' failed: {detail}", type="api_error", code="backend_error"
    )


def no_healthy_backend(tried: list[tuple[str, str]]) -> GatewayError:
    """503: every candidate was unhealthy or failed before sending anything."""
    if tried:
        listing = "; ".join(f"{name}: {why}" for name, why in tried)
        message = f"no healthy backend could serve the request (tried {listing})"
    else:
        message = "no healthy backend could serve the request (no candidates)"
    return GatewayError(
        503, message, type="api_error", code="no_healthy_backend", headers={"retry-after": "1"}
    )
