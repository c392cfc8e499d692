"""The app under test served in the test's own event loop: its lifespan driven from here, requests sent
through httpx's ASGI transport.

Why not Litestar's AsyncTestClient: it runs the lifespan in an event loop of its own on another thread,
and each request through it as a blocking call from the test's loop, while requests sent straight to the
app (asgi_post) run in the test's loop. Timers, tasks and futures made by a request then belong to one
loop and the shut-down that waits for them runs in the other: a shut-down waiting on a future of the
test's loop, while that loop is blocked waiting for the shut-down, never ends (seen as a suite that hung
in CI when the access log's write was in flight at the moment a test's gateway closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """`app` started (lifespan), a client for it, and `app` shut down on the way out."""
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
            yield client


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Run the ASGI lifespan protocol in this loop: start-up on entry, shut-down on exit. A failing
    start-up or shut-down raises the app's own exception."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope: Message = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put), name="asgi-lifespan")
    await inbox.put({"type": "lifespan.startup"})
    await _answer(task, outbox, "lifespan.startup")
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await _answer(task, outbox, "lifespan.shutdown")
        await task


async def _answer(task: asyncio.Task[None], outbox: asyncio.Queue[Message], phase: str) -> None:
    """Wait for the app's answer to `phase`; raise what the app raised when it failed."""
    reply = asyncio.ensure_future(outbox.get())
    await asyncio.wait({reply, task}, return_when=asyncio.FIRST_COMPLETED)
    if not reply.done():
        reply.cancel()
        task.result()  # the app's exception, if it ended with one
        raise RuntimeError(f"the app's lifespan ended without answering {phase}")
    message = reply.result()
    if message["type"] == f"{phase}.failed":
        await asyncio.wait({task})
        task.result()  # Litestar sends `failed`, then raises the start-up's exception
        raise RuntimeError(f"{phase} failed: {message.get('message', '')}")
    if message["type"] != f"{phase}.complete":
        raise RuntimeError(f"unexpected lifespan message {message['type']!r} during {phase}")
