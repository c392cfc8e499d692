"""One request over a pooled aiohttp session, sent again once when the pooled connection was dead."""

from __future__ import annotations

from typing import Any

import aiohttp


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
