"""`UpstreamClient` on httpx's own pool: kept for comparison in the overhead benchmark.

It is correct but slow under concurrency (see README), so it is not the default.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from gateway.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamTimeouts,
)

_JSON_HEADERS = {"content-type": "application/json"}
_FAILURES = (TimeoutError, httpx.HTTPError)


def _translate(err: BaseException, timeouts: UpstreamTimeouts, phase: str, seconds: float) -> UpstreamError:
    """httpx's failure before a response as the transport-neutral `UpstreamError`."""
    if isinstance(err, httpx.ConnectTimeout):
        return UpstreamTimeout("connect", timeouts.connect_s)
    if isinstance(err, TimeoutError):
        return UpstreamTimeout(phase, seconds)
    if isinstance(err, (httpx.ConnectError, httpx.RemoteProtocolError)):
        return UpstreamConnectError(str(err) or type(err).__name__)
    return UpstreamProtocolError(str(err) or type(err).__name__)


class HttpxStream:
    """A streaming httpx response with the same deadline behaviour as the aiohttp one."""

    def __init__(self, response: httpx.Response, deadline: float, total_s: float) -> None:
        self._response = response
        self.status = response.status_code
        self.content_type = response.headers.get("content-type", "")
        self.retry_after = response.headers.get("retry-after") if response.status_code != 200 else None
        self._deadline = deadline
        self._total_s = total_s

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._deadline - loop.time()):
                async for data in self._response.aiter_raw():
                    yield data
        except TimeoutError as err:
            raise UpstreamTimeout("total", self._total_s) from err
        except httpx.HTTPError as err:
            raise UpstreamProtocolError(f"connection lost mid-response: {err}") from err

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.HTTPError as err:
            raise UpstreamProtocolError(f"connection lost reading body: {err}") from err

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    """A shared `httpx.AsyncClient`."""

    def __init__(self) -> None:
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256), timeout=None
        )

    @staticmethod
    def _timeout(timeouts: UpstreamTimeouts) -> httpx.Timeout:
        return httpx.Timeout(connect=timeouts.connect_s, read=None, write=None, pool=None)

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeouts: UpstreamTimeouts,
    ) -> UpstreamResponse:
        try:
            async with asyncio.timeout(timeouts.total_s):
                response = await self._client.request(
                    method, url, content=body, headers=headers or _JSON_HEADERS, timeout=self._timeout(timeouts)
                )
        except _FAILURES as err:
            raise _translate(err, timeouts, "total", timeouts.total_s) from err
        return UpstreamResponse(
            status=response.status_code, body=response.content, content_type=response.headers.get("content-type", ""),
            retry_after=response.headers.get("retry-after") if response.status_code != 200 else None,
        )

    async def open_stream(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeouts: UpstreamTimeouts,
    ) -> HttpxStream:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.total_s
        first_byte_s = min(timeouts.first_byte_s, timeouts.total_s)
        request = self._client.build_request(
            method, url, content=body, headers=headers or _JSON_HEADERS, timeout=self._timeout(timeouts)
        )
        try:
            async with asyncio.timeout(first_byte_s):
                response = await self._client.send(request, stream=True)
        except _FAILURES as err:
            raise _translate(err, timeouts, "first byte", first_byte_s) from err
        return HttpxStream(response, deadline, timeouts.total_s)

    async def aclose(self) -> None:
        await self._client.aclose()
