"""Minimal ASGI plumbing for the hot routes: read a bounded body, send a whole response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.errors import GatewayError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ClientDisconnected(Exception):
    """The client went away before its request body arrived."""


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"Request body too large: the limit is {limit} bytes", code="request_too_large"
    )


async def read_body(receive: Receive, limit: int, content_length: int | None) -> bytes:
    """The whole request body, refusing more than `limit` bytes without reading them all."""
    if content_length is not None and content_length > limit:
        raise too_large(limit)
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def send_bytes(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    """A complete response with a content-length."""
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: GatewayError, request_id: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id)]
    headers.extend((k.encode(), v.encode()) for k, v in error.headers.items())
    await send_bytes(send, error.status, error.body(), headers)
