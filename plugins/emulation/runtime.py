"""Pacing, capacity, faults and the control endpoint, on aiohttp.web."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
from aiohttp import web

from plugins.emulation.knobs import Fault, Knobs
from plugins.emulation.model import FakeModel


class QueueFull(Exception):
    """More requests are waiting than `max_queue` allows; the emulator answers as its server would."""


class EmulatorRuntime:
    """The live state of one emulator: its knobs, its model, and who is running or queued."""

    def __init__(self, knobs: Knobs | None = None) -> None:
        self.knobs = knobs or Knobs()
        self.model = FakeModel(self.knobs.reply)
        self.running = 0
        self.waiting = 0
        self.requests_total = 0
        self._slots: asyncio.Semaphore | None = None
        self._slots_size = 0

    def update(self, changes: dict[str, object]) -> Knobs:
        """Apply a partial update of the knobs (validated as a whole)."""
        merged = {**msgspec.structs.asdict(self.knobs), **changes}
        self.knobs = msgspec.convert(merged, Knobs)
        self.model = FakeModel(self.knobs.reply)
        return self.knobs

    def _semaphore(self) -> asyncio.Semaphore | None:
        size = self.knobs.max_concurrency
        if size <= 0:
            return None
        if self._slots is None or self._slots_size != size:
            self._slots, self._slots_size = asyncio.Semaphore(size), size
        return self._slots

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of `max_concurrency` slots, queueing for it; `QueueFull` past `max_queue`."""
        self.requests_total += 1
        semaphore = self._semaphore()
        if semaphore is not None and semaphore.locked():
            if self.waiting >= self.knobs.max_queue:
                raise QueueFull
            self.waiting += 1
            try:
                await semaphore.acquire()
            finally:
                self.waiting -= 1
        elif semaphore is not None:
            await semaphore.acquire()
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            if semaphore is not None:
                semaphore.release()

    async def pace(self, index: int) -> None:
        """Wait as a server would before emitting token `index` (0 is the first token)."""
        delay_ms = self.knobs.ttft_ms if index == 0 else self.knobs.tpot_ms
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)

    async def hang_if_asked(self) -> None:
        if self.knobs.fault is Fault.HANG:
            await asyncio.Event().wait()

    def cut_at(self) -> int | None:
        """The token index at which a stream is cut or corrupted, or None."""
        if self.knobs.fault in (Fault.CUT_STREAM, Fault.MALFORMED_CHUNK):
            return self.knobs.fault_after_tokens
        return None


def refuse(request: web.Request) -> web.StreamResponse:
    """Drop the connection without an answer, like a crashed server."""
    if request.transport is not None:
        request.transport.abort()
    raise ConnectionResetError("emulator fault: refuse")


def control_routes(runtime: EmulatorRuntime) -> list[web.RouteDef]:
    """`GET/POST /__emulator/knobs`: read or change a running emulator's knobs; `GET /__emulator/stats`:
    requests served so far, running and waiting."""

    async def get_knobs(_request: web.Request) -> web.Response:
        return web.Response(body=msgspec.json.encode(runtime.knobs), content_type="application/json")

    async def set_knobs(request: web.Request) -> web.Response:
        try:
            knobs = runtime.update(msgspec.json.decode(await request.read()))
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as err:
            return web.json_response({"error": str(err)}, status=400)
        return web.Response(body=msgspec.json.encode(knobs), content_type="application/json")

    async def get_stats(_request: web.Request) -> web.Response:
        # How many requests reached the model: what tests of coalescing and caching count.
        stats = {"requests_total": runtime.requests_total, "running": runtime.running, "waiting": runtime.waiting}
        return web.Response(body=msgspec.json.encode(stats), content_type="application/json")

    return [web.get("/__emulator/knobs", get_knobs), web.post("/__emulator/knobs", set_knobs),
            web.get("/__emulator/stats", get_stats)]


def add_knob_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line flags every emulator takes."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    parser.add_argument("--tpot-ms", type=float, default=0.0, help="time per output token after the first")
    parser.add_argument("--max-concurrency", type=int, default=0, help="requests served at once (0: unlimited)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests allowed to wait for a slot")
    parser.add_argument("--fault", choices=[f.value for f in Fault], default="none")
    parser.add_argument("--fault-after-tokens", type=int, default=2)


def knobs_from_args(args: argparse.Namespace) -> Knobs:
    return Knobs(
        ttft_ms=args.ttft_ms, tpot_ms=args.tpot_ms, max_concurrency=args.max_concurrency,
        max_queue=args.max_queue, fault=Fault(args.fault), fault_after_tokens=args.fault_after_tokens,
    )


def serve(app: web.Application, host: str, port: int, name: str, *, shutdown_timeout: float = 1.0,
          handler_cancellation: bool = True) -> None:
    """Run an emulator app until interrupted, saying where it listens.

    By default a handler is cancelled when its client hangs up (as inference servers stop
    generating), and a short `shutdown_timeout` keeps a `hang` fault from holding SIGTERM for
    aiohttp's default 60 s.
    """
    print(f"{name} emulator listening on http://{host}:{port}", flush=True)
    web.run_app(app, host=host, port=port, print=None, access_log=None, shutdown_timeout=shutdown_timeout,
                handler_cancellation=handler_cancellation)
