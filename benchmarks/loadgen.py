"""Closed-loop HTTP/1.1 load generator on raw asyncio + httptools.

Why not aiohttp/httpx: a client library spends tens of microseconds of Python
per request (request objects, header dicts, stream readers, tasks). At ~10k+
req/s that would make the load generator, not the server, the bottleneck.
Here every connection is a bare ``asyncio.Protocol``: the request is one
precomputed ``bytes`` written per call, the response is parsed by httptools
(llhttp, in C), and the next request is sent straight from the
``on_message_complete`` callback -- no futures, no tasks, no per-request
allocations beyond a few floats.

Model: ``concurrency`` keep-alive connections, each with exactly one request
in flight (closed loop, no pipelining). The run lasts ``warmup + duration``;
only responses that *complete* inside the measured window are counted, so
throughput is ``completed / duration``.

Two opt-in extras (off by default, so the default request cycle is unchanged):
``vary`` gives every request a distinct body (a placeholder replaced by a
counter), and ``count_header`` tallies one response header's values.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import httptools

_now = time.perf_counter  # uvloop's loop.time() is ms-granular; we need us.

# How many distinct error messages to keep for the report.
_MAX_ERROR_SAMPLES = 5

# Shared by every run in this process, so a varied body is never sent twice (even across runs).
_vary_counter = itertools.count()

# The `count_header` tally key of responses without that header.
NO_HEADER = "-"


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """Serialize one ``POST`` request once; the same bytes are re-sent each time."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        "Accept: */*",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class LoadResult:
    """Outcome of one load run (one scenario against one target)."""

    concurrency: int
    duration_s: float
    completed: int = 0  # 2xx responses completed inside the measured window
    non_2xx: int = 0  # whole run, warm-up included: any failure is worth reporting
    errors: int = 0  # connection errors, parse errors, timeouts, truncated streams
    status_counts: dict[int, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)  # request sent -> response complete
    ttfb_s: list[float] = field(default_factory=list)  # request sent -> first body byte
    # Values of the `count_header` response header, whole run (NO_HEADER: absent); empty if not asked.
    header_counts: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.completed / self.duration_s if self.duration_s > 0 else 0.0

    def note_error(self, msg: str) -> None:
        self.errors += 1
        if len(self.error_samples) < _MAX_ERROR_SAMPLES and msg not in self.error_samples:
            self.error_samples.append(msg)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no samples."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


class _Run:
    """State shared by all connections of one load run."""

    def __init__(
        self,
        host: str,
        port: int,
        request: bytes,
        stream: bool,
        concurrency: int,
        window_start: float,
        stop_at: float,
        result: LoadResult,
        vary: bytes | None = None,
        count_header: bytes | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.request = request
        self.vary_parts: tuple[bytes, bytes] | None = None
        self.vary_width = 0
        if vary is not None:
            before, found, after = request.partition(vary)
            if not found or vary in after:
                raise ValueError(f"vary placeholder {vary!r} must occur exactly once in the request")
            self.vary_parts = (before, after)
            self.vary_width = len(vary)
        self.count_header = count_header.lower() if count_header is not None else None
        self.conn_class: type[_Conn] = _Conn if count_header is None else _HeaderCountingConn
        self.stream = stream
        self.window_start = window_start
        self.stop_at = stop_at
        self.result = result
        self.loop = asyncio.get_running_loop()
        self.slots = concurrency  # connections still issuing requests
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.conns: set[_Conn] = set()

    def varied_request(self) -> bytes:
        """The request with its placeholder replaced by the next counter, zero-padded to the same width."""
        assert self.vary_parts is not None
        n = next(_vary_counter)
        return self.vary_parts[0] + b"%0*d" % (self.vary_width, n) + self.vary_parts[1]

    def slot_finished(self) -> None:
        self.slots -= 1
        if self.slots == 0 and not self.done.done():
            self.done.set_result(None)

    def open_slot(self, delay: float = 0.0) -> None:
        """(Re)open a connection for one slot; it starts sending on connect."""
        self.loop.create_task(self._open(delay))

    async def _open(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if _now() >= self.stop_at:
            self.slot_finished()
            return
        try:
            await self.loop.create_connection(lambda: self.conn_class(self), self.host, self.port)
        except OSError as exc:
            self.result.note_error(f"connect: {exc!r}")
            # Back off a little so a dead server does not become a busy loop.
            self.open_slot(0.05)


class _Conn(asyncio.Protocol):
    """One keep-alive connection with one request in flight at a time."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.t0 = 0.0
        self.first = 0.0
        self.status = 0
        self.in_flight = False
        self.tail = b""  # last bytes of a streamed body, to check for [DONE]
        self.finished = False  # this slot has been handed back to the run

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence cast.
        t = cast(asyncio.Transport, transport)
        sock = t.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = t
        self.run.conns.add(self)
        self.send()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.in_flight = False
            self.run.result.note_error(f"parse: {exc!r}")
            self._drop()

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.conns.discard(self)
        self.transport = None
        if self.in_flight:
            self.in_flight = False
            self.run.result.note_error(f"connection lost mid-request: {exc!r}")
        self._drop()

    # -- request cycle ------------------------------------------------------
    def send(self) -> None:
        t = self.transport
        if t is None:
            return
        self.in_flight = True
        self.first = 0.0
        self.tail = b""
        self.t0 = _now()
        t.write(self.run.request if self.run.vary_parts is None else self.run.varied_request())

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.first:
            self.first = _now()
        if self.run.stream:
            # Keep just enough of the end to see "data: [DONE]".
            self.tail = (self.tail + body)[-32:]

    def on_message_complete(self) -> None:
        now = _now()
        self.in_flight = False
        run = self.run
        res = run.result
        status = self.status
        res.status_counts[status] = res.status_counts.get(status, 0) + 1
        if 200 <= status < 300:
            if run.stream and b"[DONE]" not in self.tail:
                res.note_error("stream ended without data: [DONE]")
            elif run.window_start <= now <= run.stop_at:
                res.completed += 1
                res.latency_s.append(now - self.t0)
                # A body-less 2xx has no first byte; fall back to full time.
                res.ttfb_s.append((self.first or now) - self.t0)
        else:
            res.non_2xx += 1
        if now < run.stop_at:
            if self.parser.should_keep_alive():
                self.send()
            else:
                # Server asked to close: reconnect, keeping concurrency constant.
                self._drop()
        else:
            self._finish()

    # -- slot bookkeeping ---------------------------------------------------
    def _drop(self) -> None:
        """Close this connection; open a replacement if the run goes on."""
        if self.finished:
            return
        self.finished = True
        if self.transport is not None:
            self.transport.close()
        if _now() < self.run.stop_at:
            self.run.open_slot()
        else:
            self.run.slot_finished()

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.run.slot_finished()


class _HeaderCountingConn(_Conn):
    """A `_Conn` that also tallies one response header (httptools only calls `on_header` if defined)."""

    def __init__(self, run: _Run) -> None:
        super().__init__(run)
        self.header_value = NO_HEADER

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == self.run.count_header:
            self.header_value = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        counts = self.run.result.header_counts
        counts[self.header_value] = counts.get(self.header_value, 0) + 1
        self.header_value = NO_HEADER


async def run_load(
    host: str,
    port: int,
    request: bytes,
    *,
    stream: bool,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
    grace: float = 10.0,
    on_window_start: Callable[[], None] | None = None,
    on_window_end: Callable[[], None] | None = None,
    vary: bytes | None = None,
    count_header: bytes | None = None,
) -> LoadResult:
    """Keep ``concurrency`` requests in flight for ``warmup + duration`` seconds.

    ``on_window_start``/``on_window_end`` run (on the event loop) at the edges
    of the measured window, e.g. to sample a server's CPU time. After the
    window, in-flight requests get ``grace`` seconds to finish; any still
    pending then are counted as timeout errors.

    ``vary``: a placeholder occurring once in ``request`` (body included), replaced on every send by
    a process-wide counter zero-padded to its width, so Content-Length stays right and no two
    requests are alike. ``count_header``: a response header whose values (whole run) are tallied in
    ``LoadResult.header_counts``.
    """
    loop = asyncio.get_running_loop()
    result = LoadResult(concurrency=concurrency, duration_s=duration)
    start = _now()
    run = _Run(
        host, port, request, stream, concurrency, start + warmup, start + warmup + duration, result, vary, count_header
    )
    if on_window_start is not None:
        loop.call_later(warmup, on_window_start)
    if on_window_end is not None:
        loop.call_later(warmup + duration, on_window_end)
    for _ in range(concurrency):
        run.open_slot()
    try:
        await asyncio.wait_for(asyncio.shield(run.done), warmup + duration + grace)
    except TimeoutError:
        stuck = sum(1 for c in run.conns if c.in_flight)
        for _ in range(stuck):
            result.note_error(f"timeout: no response within {grace:g}s after the run ended")
    for c in list(run.conns):
        if c.transport is not None:
            c.in_flight = False  # closing on purpose; not an error
            c.transport.close()
    # Let connection_lost callbacks run before the caller moves on.
    await asyncio.sleep(0)
    return result
