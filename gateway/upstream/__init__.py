"""The data-path HTTP client interface: one small surface, two transports.

Backends talk to their servers only through `UpstreamClient`, so the transport on the hot
path can be chosen by measurement (`server.upstream_client`) without touching a plugin.
aiohttp is the default: under 64 concurrent requests httpx's own pool spends milliseconds
of CPU per request while aiohttp spends a fraction of one (benchmarks/overhead.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import msgspec


class UpstreamTimeouts(msgspec.Struct, frozen=True, kw_only=True):
    """Connect, first byte (response headers) and whole-request limits, in seconds."""

    connect_s: float
    first_byte_s: float
    total_s: float


class UpstreamResponse(msgspec.Struct, kw_only=True):
    """A complete, buffered response."""

    status: int
    body: bytes
    content_type: str = ""
    retry_after: str | None = None  # the Retry-After header of a refusal (429/503), as sent


class UpstreamError(Exception):
    """Base of transport failures; plugins turn these into `GatewayError`s with their name."""


class UpstreamConnectError(UpstreamError):
    """Could not connect or the connection dropped before any response: safe to try elsewhere."""


class UpstreamTimeout(UpstreamError):
    """A time limit ran out; `phase` is `connect`, `first byte` or `total`."""

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"{phase} timeout after {seconds:g}s")
        self.phase = phase
        self.seconds = seconds


class UpstreamProtocolError(UpstreamError):
    """The server broke off or sent something unreadable after the response started."""


class UpstreamStream(Protocol):
    """An open response whose body is read as it arrives."""

    status: int
    content_type: str
    retry_after: str | None

    def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; raises `UpstreamTimeout` at the total deadline."""
        ...

    async def read(self) -> bytes:
        """The whole remaining body (used for error bodies of non-200 answers)."""
        ...

    async def aclose(self) -> None: ...


class UpstreamClient(Protocol):
    """A pooled keep-alive HTTP/1.1 client shared by every backend."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeouts: UpstreamTimeouts,
    ) -> UpstreamResponse: ...

    async def open_stream(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeouts: UpstreamTimeouts,
    ) -> UpstreamStream: ...

    async def aclose(self) -> None: ...


def make_upstream_client(name: str) -> UpstreamClient:
    """Build the transport named in `server.upstream_client`."""
    if name == "aiohttp":
        from gateway.upstream.aiohttp_client import AiohttpUpstream

        return AiohttpUpstream()
    if name == "httpx":
        from gateway.upstream.httpx_client import HttpxUpstream

        return HttpxUpstream()
    raise ValueError(f"unknown upstream client {name!r}")
