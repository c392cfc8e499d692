"""The speculative clients' HTTP plumbing: their session, a JSON POST with every failure turned into the
caller's exception, and a request sent again once when its pooled connection was dead."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec


async def send(session: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any] | None = None,
               *, limits: aiohttp.ClientTimeout | None = None) -> aiohttp.ClientResponse:
    """The response to one request, retried once on a fresh connection when a pooled one was dead.

    Measured: llama-server (cpp-httplib) closes the connection after every streamed answer although
    it announced keep-alive, and idle ones after its 5 s keep-alive timeout. aiohttp pools such a
    connection and the next request on it fails before the server has read it (ClientOSError "Can
    not write request body", or ServerDisconnectedError). Sending again is safe: a completion has
    no side effect besides its slot's cache (tokenizing has none). A refused connection is not
    retried (the server is down). `limits`: this call's timeouts (default: the session's).
    """
    try:
        return await session.request(method, url, json=body, timeout=limits)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as err:
        if isinstance(err, aiohttp.ClientConnectorError):
            raise
        return await session.request(method, url, json=body, timeout=limits)


class SessionClient:
    """Base of the speculative HTTP clients: a shared aiohttp session (never closed here) or one made on
    first use (inside the running event loop, as aiohttp requires) and closed by `aclose`."""

    def __init__(self, session: aiohttp.ClientSession | None, timeout_s: float) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._own_session = session is None
        self._session = session

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any], *, failure: type[Exception],
                    what: str, detail: Callable[[bytes], str], limits: aiohttp.ClientTimeout | None = None) -> Any:
    """POST `body`; the decoded JSON of a 200 answer. A transport failure, another status (with the server's
    message, read by `detail`) or a body that is not JSON raises `failure` naming `what` ("verify call")."""
    try:
        async with await send(session, "POST", url, body, limits=limits) as response:
            content = await response.read()
            status = response.status
    except (TimeoutError, aiohttp.ClientError) as err:
        raise failure(f"{what} failed: {type(err).__name__}: {err}") from err
    if status != 200:
        raise failure(f"{what} answered {status}: {detail(content)}")
    try:
        return msgspec.json.decode(content)
    except msgspec.DecodeError as err:
        raise failure(f"{what}: the answer is not JSON: {err}") from err
