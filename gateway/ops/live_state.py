"""Which `GatewayState` serves requests now, and how many requests each state still has open.

A config reload builds a whole new state and swaps it in here: a request reads `current` once,
when it starts, and keeps that state to its end, so a stream opened before a reload finishes on
the backends, routes and settings it started with. The old state is closed once its last
request is done (or its drain deadline passes). `draining` turns on when the process is asked
to stop: /ready answers 503 from then on so load balancers send new work elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.state import GatewayState


class LiveState:
    """The serving state and its swap; single event loop, no locks needed."""

    def __init__(self, state: GatewayState, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.current = state
        self.generation = 1
        self.draining = False
        self.drain_started: float | None = None
        self._clock = clock
        self._on_swap: list[Callable[[GatewayState], None]] = []

    def on_swap(self, callback: Callable[[GatewayState], None]) -> None:
        self._on_swap.append(callback)

    def swap(self, state: GatewayState) -> GatewayState:
        """Serve new requests from `state`; the state it replaces (still finishing its requests)."""
        old, self.current = self.current, state
        self.generation += 1
        for callback in self._on_swap:
            callback(state)
        return old

    def begin_drain(self) -> None:
        """The process is stopping: readiness fails from now on; open requests run to their end."""
        if not self.draining:
            self.draining = True
            self.drain_started = self._clock()


async def wait_drained(state: GatewayState, deadline_s: float, *, poll_s: float = 0.05) -> bool:
    """Wait until `state` has no open requests; False when `deadline_s` passed first."""
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline_s
    while state.open_requests > 0:
        if loop.time() >= until:
            return False
        await asyncio.sleep(poll_s)
    return True
