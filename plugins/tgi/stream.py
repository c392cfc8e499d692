"""Reading a TGI SSE stream and yielding whole OpenAI events, with failures as `GatewayError`s.

TGI frames events as axum writes them, `data:{...}\\n\\n` with no space after the colon, and
sends `:\\n\\n` comments as keep-alives (`Sse::keep_alive(KeepAlive::default())`, server.rs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from gateway.errors import GatewayError, backend_failed
from gateway.sse import SSEFramer
from gateway.upstream import UpstreamError, UpstreamStream
from plugins.openai_compat.errors import transport_error


class Translator(Protocol):
    """Turns one TGI event payload into OpenAI SSE bytes."""

    finished: bool
    ended_by_done: bool

    def event(self, payload: bytes) -> bytes: ...

    def tail(self) -> bytes:
        """The events after the last one translated, ending with `data: [DONE]`."""
        ...


def _payload(event: bytes) -> bytes | None:
    """The data of one SSE event (lines joined), or None for a comment-only event."""
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
    return b"\n".join(data) if data else None


class TGIEventStream:
    """An open TGI stream translated event by event; raises when the stream is cut or broken."""

    def __init__(self, backend: str, upstream: UpstreamStream, translator: Translator) -> None:
        self._backend = backend
        self._upstream = upstream
        self._translator = translator

    async def __aiter__(self) -> AsyncIterator[bytes]:
        translator = self._translator
        framer = SSEFramer()
        ended = False
        try:
            async for data in self._upstream.chunks():
                if ended:
                    continue  # read to the end so the connection goes back to the pool
                events = framer.feed(data)
                if not events:
                    continue
                out: list[bytes] = []
                failure: GatewayError | None = None
                for event in events.split(b"\n\n")[:-1]:
                    payload = _payload(event)
                    if payload is None:
                        continue  # keep-alive
                    if payload == b"[DONE]":
                        translator.finished = ended = True
                        break
                    try:
                        out.append(translator.event(payload))
                    except GatewayError as err:
                        failure = err
                        break
                    if translator.finished and not translator.ended_by_done:
                        ended = True
                        break
                if ended:
                    out.append(translator.tail())
                chunk = b"".join(out)
                if chunk:
                    yield chunk  # what arrived before a failure is still the client's
                if failure is not None:
                    raise failure
        except UpstreamError as err:
            raise transport_error(self._backend, err) from err
        if not ended:
            raise backend_failed(self._backend, "stream ended before its last event (cut mid-stream)")

    async def aclose(self) -> None:
        await self._upstream.aclose()
