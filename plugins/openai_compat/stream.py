"""An OpenAI SSE stream read from an upstream response, forwarded in whole events."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from gateway.errors import GatewayError, backend_failed
from gateway.sse import SSEFramer
from gateway.upstream import UpstreamError, UpstreamStream
from plugins.openai_compat.errors import error_message, transport_error


def _event_error(backend: str, event: bytes) -> GatewayError | None:
    """llama.cpp and others report mid-stream failures as `error: {...}` or `data: {"error":...}`."""
    for line in event.split(b"\n"):
        if line.startswith(b"error:"):
            message, _, _ = error_message(line[6:].strip())
            return backend_failed(backend, message)
        if line.startswith(b"data:") and b'"error"' in line[:20]:
            try:
                decoded = msgspec.json.decode(line[5:].strip())
            except msgspec.DecodeError:
                continue
            if isinstance(decoded, dict) and "error" in decoded and "choices" not in decoded:
                message, _, _ = error_message(line[5:].strip())
                return backend_failed(backend, message)
    return None


def split_at_error(backend: str, events: bytes) -> tuple[bytes, GatewayError | None]:
    """(the events before the first error event, that error) for a run of whole events."""
    good: list[bytes] = []
    for event in events.split(b"\n\n")[:-1]:
        failure = _event_error(backend, event)
        if failure is not None:
            return b"".join(good), failure
        good.append(event + b"\n\n")
    return events, None


class OpenAIEventStream:
    """Yields runs of complete SSE events as they arrive; raises if the stream is cut."""

    def __init__(self, backend: str, upstream: UpstreamStream) -> None:
        self._backend = backend
        self._upstream = upstream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        framer = SSEFramer()
        try:
            async for data in self._upstream.chunks():
                if framer.done:
                    # Keep reading to the end of the body after [DONE] so the connection
                    # goes back to the pool instead of being closed half-read.
                    continue
                events = framer.feed(data)
                if not events:
                    continue
                if b"error" in events:  # one C-level search; parse only on the rare hit
                    events, failure = split_at_error(self._backend, events)
                    if failure is not None:
                        if events:
                            yield events  # what came before the error is still the client's
                        raise failure
                yield events
        except UpstreamError as err:
            raise transport_error(self._backend, err) from err
        if not framer.done:
            raise backend_failed(self._backend, "stream ended before data: [DONE]")

    async def aclose(self) -> None:
        await self._upstream.aclose()
