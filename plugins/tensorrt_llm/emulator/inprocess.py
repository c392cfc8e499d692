"""Running an emulator inside the caller's event loop, for tests that drive the plugin directly."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from plugins.emulation import EmulatorRuntime, Knobs
from plugins.tensorrt_llm.emulator.__main__ import build_app
from plugins.vllm.emulator.token_model import TokenKnobs


@dataclass(frozen=True)
class RunningEmulator:
    """Where an in-process emulator listens and the live state its knobs change."""

    url: str
    runtime: EmulatorRuntime


@asynccontextmanager
async def running_emulator(mode: str, knobs: Knobs | None = None, *, model_name: str | None = None,
                           exclude_input_in_output: bool = False,
                           token_knobs: TokenKnobs | None = None) -> AsyncIterator[RunningEmulator]:
    """An emulator of `mode` on a free 127.0.0.1 port until the block ends."""
    runtime = EmulatorRuntime(knobs)
    app = build_app(mode, runtime, model_name=model_name, exclude_input_in_output=exclude_input_in_output,
                    token_knobs=token_knobs)
    # A short shutdown: requests left hanging by the `hang` fault must not hold the test up.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield RunningEmulator(f"http://127.0.0.1:{port}", runtime)
    finally:
        await runner.cleanup()
