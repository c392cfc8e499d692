"""A pooled connection the server closed as it was reused is retried once on a fresh one."""

from __future__ import annotations

import asyncio

from gateway.upstream import UpstreamTimeouts
from gateway.upstream.aiohttp_client import AiohttpUpstream

TIMEOUTS = UpstreamTimeouts(connect_s=2, first_byte_s=5, total_s=5)
REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def one_request_per_connection_server() -> tuple[asyncio.Server, list[int]]:
    """Answers the first request on each connection, then hangs up on the next one without a word:
    what a keep-alive connection closed by the server looks like to the client that reuses it."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        served = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), 0)
            await reader.readexactly(length)
            if served:
                writer.close()
                return
            writer.write(REPLY)
            await writer.drain()
            served += 1

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, connections


async def test_buffered_and_streamed_requests_survive_a_stale_pooled_connection() -> None:
    server, connections = await one_request_per_connection_server()
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/x"
    upstream = AiohttpUpstream()
    try:
        for _ in range(3):
            response = await upstream.request("POST", url, body=b"{}", timeouts=TIMEOUTS)
            assert (response.status, response.body) == (200, b"{}")
        stream = await upstream.open_stream("POST", url, body=b"{}", timeouts=TIMEOUTS)
        assert stream.status == 200
        assert b"".join([chunk async for chunk in stream.chunks()]) == b"{}"
        await stream.aclose()
        second = await upstream.open_stream("POST", url, body=b"{}", timeouts=TIMEOUTS)
        assert second.status == 200
        await second.aclose()
        assert len(connections) == 5  # every reuse was refused and answered on a new connection
    finally:
        await upstream.aclose()
        server.close()
        await server.wait_closed()
