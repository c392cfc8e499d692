"""An OpenAI SSE stream read from an upstream response, forwarded in whole events.

Every event is checked as it passes: its data must be one JSON object, and an error the
server reports in-band (`error: {...}` as llama.cpp sends it, or `data: {"error": ...}`)
ends the stream. Without the check a broken event would reach the client as is, and the
client would choke on it with no word from the gateway. The check is one msgspec decode
into a struct with a single optional field, about a microsecond per event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from gateway.errors import GatewayError, backend_failed
from gateway.sse import SSEFramer
from gateway.upstream import UpstreamError, UpstreamStream
from plugins.openai_compat.errors import error_message, transport_error


class _EventProbe(msgspec.Struct):
    """All the gateway reads of an event: whether it is an error report (other fields skipped)."""

    error: Any = None
    choices: Any = None


_probe = msgspec.json.Decoder(_EventProbe).decode


def event_problem(backend: str, event: bytes) -> GatewayError | None:
    """The failure one SSE event reports or is, or None for a well-formed chunk."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data == b"[DONE]":
                continue
            try:
                probe = _probe(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                return backend_failed(backend, f"malformed stream event ({err})")
            if probe.error is not None and probe.choices is None:
                message, _, _ = error_message(data)
                return backend_failed(backend, message)
        elif line.startswith(b"error:"):
            message, _, _ = error_message(line[6:].strip())
            return backend_failed(backend, message)
    return None


def split_at_problem(backend: str, events: bytes) -> tuple[bytes, GatewayError | None]:
    """(the events before the first bad one, its failure) for a run of whole events."""
    if events.count(b"\n\n") == 1:  # the common case: one event per read
        failure = event_problem(backend, events)
        return (b"", failure) if failure is not None else (events, None)
    good: list[bytes] = []
    for event in events.split(b"\n\n")[:-1]:
        failure = event_problem(backend, event)
        if failure is not None:
            return b"".join(good), failure
        good.append(event + b"\n\n")
    return events, None


class OpenAIEventStream:
    """Yields runs of complete SSE events as they arrive; raises if the stream is cut or broken."""

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
                events, failure = split_at_problem(self._backend, events)
                if failure is not None:
                    if events:
                        yield events  # what came before the failure is still the client's
                    raise failure
                yield events
        except UpstreamError as err:
            raise transport_error(self._backend, err) from err
        if not framer.done:
            raise backend_failed(self._backend, "stream ended before data: [DONE]")

    async def aclose(self) -> None:
        await self._upstream.aclose()
