"""POST straight to a running gateway's ASGI app, with headers, another path, or a client that hangs up
while the response is being sent (httpx's ASGI transport only says so once the app has finished)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from .conftest import GatewayUnderTest


class Answer:
    """One response as the ASGI app sent it."""

    def __init__(self) -> None:
        self.status_code = 0
        self.headers: dict[str, str] = {}
        self.content = b""

    def json(self) -> Any:
        return msgspec.json.decode(self.content)


async def post(gw: GatewayUnderTest, body: dict[str, Any], *, hang_up: asyncio.Event | None = None,
               headers: dict[str, str] | None = None, path: str = "/v1/chat/completions") -> Answer:
    """POST `body` as JSON to `path`; `hang_up` set makes the client disconnect."""
    payload = msgspec.json.encode(body)
    answer = Answer()
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        if received == 1:
            return {"type": "http.request", "body": payload, "more_body": False}
        await (hang_up or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status_code = message["status"]
            answer.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body" and not (hang_up and hang_up.is_set()):
            answer.content += message.get("body", b"")

    raw_headers = [(b"content-type", b"application/json")]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": raw_headers, "http_version": "1.1",
             "scheme": "http", "server": ("test", 80), "client": ("test", 1), "root_path": "", "app": gw.app}
    await gw.app(scope, receive, send)
    return answer
