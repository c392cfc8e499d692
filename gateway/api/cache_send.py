"""The leader's `send`: passes every ASGI message to the client and copies the answer on the way.

A stream's events are recorded and published to identical requests following this one (in this
process and, through Redis, in others) as they pass: the client gets each chunk the moment it would
without the cache, nothing is held back. A whole body is kept as sent. If the client hangs up while
others still follow, the answer goes on being produced for them and messages to the gone client are
dropped (`muted`).
"""

from __future__ import annotations

import time

from gateway.api.asgi_io import Message, Send
from gateway.cache.entry import CacheEntry
from gateway.cache.flight import Flight
from gateway.cache.record import StreamRecorder, body_entry
from gateway.cache.remote_flight import RemoteLead


class CacheSend:
    """Tees one response into a `Flight` (and a `RemoteLead`) while sending it to the client."""

    __slots__ = ("backend", "body", "flight", "lead", "muted", "recorder", "send", "status")

    def __init__(self, send: Send, flight: Flight, lead: RemoteLead | None, recorder: StreamRecorder | None) -> None:
        self.send = send
        self.flight = flight
        self.lead = lead
        self.recorder = recorder  # None for a whole-body (non-stream) answer
        self.muted = False
        self.status = 0
        self.backend = ""
        self.body: bytes | None = None

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            data: bytes = message.get("body", b"")
            recorder = self.recorder
            if recorder is None:
                self.body = data if self.body is None else self.body + data
            elif data:
                for payload in recorder.feed(data):
                    self.flight.publish(payload)
                    if self.lead is not None:
                        self.lead.publish(payload)
        elif kind == "http.response.start":
            self.status = message["status"]
            for name, value in message["headers"]:
                if name == b"x-gateway-backend":
                    self.backend = value.decode("latin-1")
        if not self.muted:
            await self.send(message)

    def entry(self, *, estimated_prompt_tokens: int, kind: str) -> CacheEntry | None:
        """The complete answer that passed, or None when it did not end cleanly (error, cut, too large)."""
        if self.status != 200:
            return None
        now = time.time()
        recorder = self.recorder
        if recorder is None:
            return None if self.body is None else body_entry(kind, self.body, self.backend, now=now)
        if not recorder.done or recorder.failed or recorder.too_large:
            return None
        return recorder.finish(self.backend, estimated_prompt_tokens=estimated_prompt_tokens, now=now)

    def why_incomplete(self) -> str:
        """For the log line when `entry()` is None."""
        recorder = self.recorder
        if self.status != 200:
            return f"status {self.status or 'never sent'}"
        if recorder is None:
            return "no body"
        if recorder.failed:
            return "the stream ended with an error event"
        if recorder.too_large:
            return "too large to keep"
        return "the stream ended without [DONE]"
