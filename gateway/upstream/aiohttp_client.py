"""`UpstreamClient` on aiohttp: the default data-path transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

from gateway.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamTimeouts,
)

_JSON_HEADERS = {"content-type": "application/json"}
_FAILURES = (TimeoutError, aiohttp.ClientError, ConnectionError)
# _STALE: a pooled keep-alive connection the server closed just as it was reused (llama.cpp's
# server does this right after a stream ends) fails with ServerDisconnectedError before any
# response byte. Such a request is sent once more on a fresh connection, as HTTP clients do
# for idle pooled connections; a second disconnect is a real failure.


def _translate(err: BaseException, timeouts: UpstreamTimeouts, phase: str, seconds: float) -> UpstreamError:
    """aiohttp's failure before a response as the transport-neutral `UpstreamError`."""
    if isinstance(err, aiohttp.ServerTimeoutError):  # before TimeoutError: it is one
        return UpstreamTimeout("connect", timeouts.connect_s)
    if isinstance(err, TimeoutError):
        return UpstreamTimeout(phase, seconds)
    if isinstance(err, (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError)):
        return UpstreamConnectError(str(err) or type(err).__name__)
    return UpstreamProtocolError(str(err) or type(err).__name__)


class AiohttpStream:
    """A streaming response with a whole-request deadline enforced by one timer, not per read."""

    def __init__(self, response: aiohttp.ClientResponse, deadline: float, total_s: float) -> None:
        self._response = response
        self.status = response.status
        self.content_type = response.headers.get("content-type", "")
        self.retry_after = response.headers.get("retry-after") if response.status != 200 else None
        self._total_s = total_s
        self._expired = False
        self._finished = False
        # A single timer that closes the connection at the deadline costs far less than
        # wrapping every chunk read in its own timeout.
        self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._response.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._response.content.iter_any():
                yield data
            self._finished = True
        except (aiohttp.ClientError, ConnectionError) as err:
            if self._expired:
                raise UpstreamTimeout("total", self._total_s) from err
            raise UpstreamProtocolError(f"connection lost mid-response: {err or type(err).__name__}") from err
        if self._expired:
            raise UpstreamTimeout("total", self._total_s)

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (aiohttp.ClientError, ConnectionError) as err:
            raise UpstreamProtocolError(f"connection lost reading body: {err}") from err

    async def aclose(self) -> None:
        self._timer.cancel()
        if self._finished:
            self._response.release()  # back to the pool for the next request
        else:
            self._response.close()  # unread bytes would poison a reused connection


class AiohttpUpstream:
    """A shared aiohttp session with keep-alive pooling and no per-host connection cap."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[UpstreamTimeouts, aiohttp.ClientTimeout] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
            )
        return self._session

    def _timeout(self, timeouts: UpstreamTimeouts) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(timeouts)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s)
            self._timeouts[timeouts] = timeout
        return timeout

    async def _buffered(
        self, session: aiohttp.ClientSession, method: str, url: str, body: bytes | None,
        headers: dict[str, str] | None, timeouts: UpstreamTimeouts,
    ) -> UpstreamResponse:
        async with session.request(
            method, url, data=body, headers=headers or _JSON_HEADERS, timeout=self._timeout(timeouts)
        ) as response:
            data = await response.read()
            found = response.headers
            return UpstreamResponse(
                status=response.status, body=data, content_type=found.get("content-type", ""),
                retry_after=found.get("retry-after") if response.status != 200 else None,
            )

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeouts: UpstreamTimeouts,
    ) -> UpstreamResponse:
        session = self._client()
        try:
            async with asyncio.timeout(timeouts.total_s):
                try:
                    return await self._buffered(session, method, url, body, headers, timeouts)
                except aiohttp.ServerDisconnectedError:  # see _STALE: once more, on a fresh connection
                    return await self._buffered(session, method, url, body, headers, timeouts)
        except _FAILURES as err:
            raise _translate(err, timeouts, "total", timeouts.total_s) from err

    async def open_stream(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeouts: UpstreamTimeouts,
    ) -> AiohttpStream:
        session = self._client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.total_s
        first_byte_s = min(timeouts.first_byte_s, timeouts.total_s)
        try:
            async with asyncio.timeout(first_byte_s):
                try:
                    response = await session.request(
                        method, url, data=body, headers=headers or _JSON_HEADERS, timeout=self._timeout(timeouts)
                    )
                except aiohttp.ServerDisconnectedError:  # see _STALE: once more, on a fresh connection
                    response = await session.request(
                        method, url, data=body, headers=headers or _JSON_HEADERS, timeout=self._timeout(timeouts)
                    )
        except _FAILURES as err:
            raise _translate(err, timeouts, "first byte", first_byte_s) from err
        return AiohttpStream(response, deadline, timeouts.total_s)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
