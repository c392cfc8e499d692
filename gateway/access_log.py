"""The access log: one JSON line per OpenAI request, on stderr or appended to a file.

A line names the request (id, key name, tenant, path, model, route, backend), what happened
(status, stream, cache, speculative) and what it cost (tokens, USD, milliseconds to the end and to
the first token). Never the key itself: `key` is the name the `auth` section gives it.

Why not the `logging` module: a LogRecord, a formatter and a handler lock cost about ten
microseconds a request, a third of the handler's whole budget, and a handler writing to a
blocked pipe stalls the event loop. Here a line is one msgspec encode and a list append; the
lines of each 50 ms are handed to a worker thread in one piece, written in writes of at most
PIPE_BUF bytes that end on a line (so they never interleave mid-line with other writers of stderr).
When the destination stops taking lines, at most `max_pending_bytes` wait; later lines are dropped
and counted, and the count is logged once the writes go through again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import msgspec

from gateway.api.request_record import RequestRecord
from gateway.observability_settings import LoggingConfig
from gateway.schemas import OPENAI_PATHS

log = logging.getLogger("gateway.access")

_MAX_MODEL = 256  # the model name is the client's text: a line stays a line, whatever was sent
_PIPE_BUF = 4096  # writes up to this size are atomic on a pipe
_MILLIS = [f".{ms:03d}Z" for ms in range(1000)]
_STDERR = 2  # the descriptor, not sys.stderr: whatever replaced the Python object, the process's stderr


class AccessLine(msgspec.Struct, gc=False):
    """One access-log line; the fields in the order they are written. Built positionally (a tenth of
    the cost of keywords, measured) and untracked by the garbage collector (its fields hold no cycles)."""

    time: str  # the request's arrival, ISO 8601 UTC with milliseconds
    request_id: str
    key: str | None  # the API key's configured name (never the key); null without auth
    tenant: str
    path: str
    model: str  # as the client asked for it
    route: str
    backend: str  # "cache" when the response cache answered, "" when no backend did
    status: int
    error: str  # a stream cut after its first byte: its error event's code (status stays 200); else ""
    stream: bool
    cache: str  # hit | miss | coalesced | bypass, "" before the cache was reached
    speculative: bool
    input_tokens: int
    output_tokens: int
    cost_usd: float
    duration_ms: float
    ttft_ms: float | None


class AccessLog:
    """The request sink that writes access-log lines; `aclose` writes what is left."""

    def __init__(self, path: str | None = None, *, flush_interval_s: float = 0.05,
                 max_pending_bytes: int = 16 * 1024 * 1024) -> None:
        self.path = path
        self._fd: int | None = None if path is not None else _STDERR
        self._interval = flush_interval_s
        self._max_pending = max_pending_bytes
        self._encode = msgspec.json.Encoder().encode
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._busy = False  # a flush is scheduled or a write is running: lines wait for it
        self._write_done: asyncio.Future[None] | None = None
        self.dropped = 0
        self._reported_drops = 0
        self._closing = self._closed = False
        self._second = -1
        self._second_text = ""

    @classmethod
    def from_config(cls, config: LoggingConfig) -> AccessLog | None:
        """The access log the config asks for, or None when it is off."""
        return cls(config.access_path) if config.access else None

    def open(self) -> None:
        """Open the file (at start-up, so a path that cannot be written fails the start, not a request)."""
        if self._fd is None and self.path is not None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def _time(self, wall: float) -> str:
        second = int(wall)
        if second != self._second:  # strftime once a second, not once a request
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._second_text + _MILLIS[int((wall - second) * 1000.0)]

    def line(self, record: RequestRecord) -> bytes:
        """The JSON line of one request (without its newline: lines are joined by the writer)."""
        ttft = record.ttft_s
        # Milliseconds to the microsecond: int() and a division cost a fifth of round(x, 3).
        return self._encode(AccessLine(
            self._time(record.wall_start), record.request_id.decode("ascii", "replace"), record.key_name,
            record.tenant, OPENAI_PATHS[record.kind], record.model[:_MAX_MODEL], record.route, record.backend,
            record.status, record.error, record.stream, record.cache, record.speculative, record.input_tokens,
            record.output_tokens, record.cost_usd, int(record.duration_s * 1e6) / 1000.0,
            None if ttft is None else int(ttft * 1e6) / 1000.0,
        ))

    def __call__(self, record: RequestRecord) -> None:
        if self._closed or self._pending_bytes >= self._max_pending:
            self.dropped += 1  # the destination is not keeping up: memory stays bounded
            return
        line = self.line(record)
        self._pending.append(line)
        self._pending_bytes += len(line) + 1
        if not self._busy:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # booked outside a loop (a script): write at once
                self._write(self._take())
                return
            self._busy = True
            loop.call_later(self._interval, self._flush, loop)

    def _take(self) -> list[bytes]:
        lines, self._pending, self._pending_bytes = self._pending, [], 0
        return lines

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._closing:
            return
        lines = self._take()
        if not lines:
            self._busy = False
            return
        future = loop.run_in_executor(None, self._write, lines)
        self._write_done = future
        future.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[None]) -> None:
        self._write_done = None
        if not future.cancelled() and future.exception() is not None:
            log.error("access log: writing to %s failed: %s", self.path or "stderr", future.exception())
        elif self.dropped > self._reported_drops:
            log.warning("access log: %d line(s) dropped while %s was not taking them",
                        self.dropped - self._reported_drops, self.path or "stderr")
            self._reported_drops = self.dropped
        if self._pending and not future.cancelled() and not self._closing:
            loop = future.get_loop()
            loop.call_later(self._interval, self._flush, loop)
        else:
            self._busy = False

    def _write(self, lines: list[bytes]) -> None:
        """Write lines in as few writes as keep each at most PIPE_BUF and ending on a line."""
        self.open()
        fd = self._fd
        assert fd is not None
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if size and size + len(line) + 1 > _PIPE_BUF:
                _write_all(fd, b"\n".join(chunk) + b"\n")
                chunk, size = [], 0
            chunk.append(line)
            size += len(line) + 1
        if chunk:
            _write_all(fd, b"\n".join(chunk) + b"\n")

    async def aclose(self) -> None:
        """Wait for the write under way, write what is left, close the file; later lines are dropped."""
        self._closing = True  # scheduled flushes stand down: the rest is written here, in order
        if self._write_done is not None:
            await asyncio.wait([self._write_done])  # its failure is logged by _written
        while lines := self._take():
            await asyncio.to_thread(self._write, lines)
        self._closed = True
        if self.path is not None and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def flush_now(self) -> None:
        """Write what is pending, blocking (tests; a process about to exit)."""
        lines = self._take()
        if lines:
            self._write(lines)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
