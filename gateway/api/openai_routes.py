"""The OpenAI routes as raw ASGI handlers: the gateway's hot path.

Mounted as Litestar `@asgi` routes so each request skips the framework's per-request
machinery (measured at 110-250 µs a request and 11-22 µs an SSE chunk for a regular
handler returning a `Stream`); everything else in the app stays ordinary Litestar.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

from gateway.api.asgi_io import ClientDisconnected, Receive, Scope, Send, read_body, send_bytes, send_error
from gateway.api.decode import decode_request
from gateway.api.disconnect import DisconnectWatch
from gateway.api.model_rename import ModelRenamer
from gateway.errors import GatewayError, model_not_found
from gateway.routing.dispatcher import StreamResult
from gateway.schemas import RequestKind

if TYPE_CHECKING:
    from gateway.state import GatewayState

log = logging.getLogger("gateway.api")

_MAX_REQUEST_ID = 200
_INTERNAL = GatewayError(500, "internal gateway error; see the gateway's logs", type="api_error",
                         code="internal_error")
_NOT_POST = GatewayError(405, "method not allowed: use POST", code="method_not_allowed")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_JSON_HEADERS = [(b"content-type", b"application/json")]


def _request_meta(scope: Scope) -> tuple[bytes, int | None]:
    """(request id, content-length) from the request headers, in one pass."""
    request_id: bytes | None = None
    content_length: int | None = None
    for key, value in scope["headers"]:
        if key == b"x-request-id":
            if 0 < len(value) <= _MAX_REQUEST_ID and value.isascii() and value.decode("ascii").isprintable():
                request_id = value
        elif key == b"content-length":
            with contextlib.suppress(ValueError):
                content_length = int(value)
    return request_id or os.urandom(12).hex().encode(), content_length


class OpenAIHandler:
    """One ASGI callable per OpenAI endpoint, sharing the gateway's state."""

    def __init__(self, state: GatewayState, kind: RequestKind) -> None:
        self.state = state
        self.kind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id, content_length = _request_meta(scope)
        if scope["method"] != "POST":
            await send_error(send, _NOT_POST, request_id)
            return
        state = self.state
        route_name, backend_name, status = "", "", 200
        watch: DisconnectWatch | None = None
        try:
            body = await read_body(receive, state.config.server.max_body_bytes, content_length)
            data, request = decode_request(self.kind, body)
            route = state.routes.lookup(request.model)
            if route is None:
                raise model_not_found(request.model)
            route_name = route.model
            watch = DisconnectWatch(receive)
            if self.kind != "embedding" and request.stream:
                result = await state.dispatcher.open_stream(route, self.kind, data)
                backend_name = result.backend.name
                await self._stream(send, result, request.model, request_id, route_name, started, watch)
                return
            backend, payload = await state.dispatcher.call(route, self.kind, data)
            backend_name = backend.name
            watch.finish()
            headers = [*_JSON_HEADERS, (b"x-gateway-backend", backend.name.encode()), (b"x-request-id", request_id)]
            await send_bytes(send, 200, ModelRenamer(request.model)(payload), headers)
        except ClientDisconnected:
            status = 499
        except asyncio.CancelledError:
            if watch is None or not watch.absorb():
                raise
            status = 499  # the client hung up; the upstream request was cancelled with us
        except GatewayError as err:
            status = err.status
            if watch is not None:
                watch.finish()
            await send_error(send, err, request_id)
        except Exception:
            status = 500
            log.exception("unexpected error serving request %s", request_id.decode())
            if watch is not None:
                watch.finish()
            await send_error(send, _INTERNAL, request_id)
        finally:
            if watch is not None:
                watch.finish()
            state.metrics.observe_request(route_name, backend_name, status, time.perf_counter() - started)

    async def _stream(
        self,
        send: Send,
        result: StreamResult,
        client_model: str,
        request_id: bytes,
        route_name: str,
        started: float,
        watch: DisconnectWatch,
    ) -> None:
        """Write each batch of events the moment it arrives; end a failed stream with an error event."""
        backend = result.backend
        rename = ModelRenamer(client_model)
        try:
            await send({
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    *_SSE_HEADERS, (b"x-gateway-backend", backend.name.encode()), (b"x-request-id", request_id)
                ],
            })
            await send({"type": "http.response.body", "body": rename(result.first), "more_body": True})
            self.state.metrics.observe_ttft(route_name, backend.name, time.perf_counter() - started)
            try:
                async for events in result.rest:
                    await send({"type": "http.response.body", "body": rename(events), "more_body": True})
            except Exception as exc:
                # Headers are gone: the only way left to tell the client is an error event.
                err = exc if isinstance(exc, GatewayError) else _INTERNAL
                if not isinstance(exc, GatewayError):
                    log.exception("unexpected error streaming request %s", request_id.decode())
                log.warning("stream from %s failed after its first byte: %s", backend.name, err.message)
                self.state.metrics.observe_stream_error(route_name, backend.name)
                await send({"type": "http.response.body", "body": err.sse_event(), "more_body": True})
            watch.finish()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await result.stream.aclose()
