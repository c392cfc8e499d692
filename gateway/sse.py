"""Server-sent-event framing for pass-through streams.

The gateway forwards upstream bytes as they arrive but only ever in whole events, so an
error event appended after a failure can never land inside a half-written one. Finding
event boundaries is one `rfind` per chunk; the JSON inside is never decoded here.
"""

from __future__ import annotations

DONE_EVENT = b"data: [DONE]\n\n"


class SSEFramer:
    """Splits a byte stream into runs of complete SSE events (`...\\n\\n`)."""

    __slots__ = ("_pending", "done")

    def __init__(self) -> None:
        self._pending = b""
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Add bytes; return every complete event now available (maybe b"")."""
        if self._pending:
            data = self._pending + data
        if b"\r" in data:  # servers may frame with CRLF; normalize once so boundaries are uniform
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            return b""
        self._pending = data[end + 2 :]
        events = data[: end + 2]
        if events.endswith(DONE_EVENT):
            self.done = True
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an incomplete event still waiting for its end."""
        return self._pending
