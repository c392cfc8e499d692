"""Which `GatewayState` serves requests now, and how many requests each state still has open.

A config reload builds a whole new state and swaps it in here: a request reads `current` once,
when it starts, and keeps that state to its end, so a stream opened before a reload finishes on
the backends, routes and settings it started with. The old state is closed once its last
request is done (or its drain deadline passes). `draining` turns on when the process is asked
to stop: /ready answers 503 from then on so load balancers send new work elsewhere.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from gateway.state import GatewayState

if TYPE_CHECKING:
    from litestar import Request


class LiveState:
    """The serving state and its swap; single event loop, no locks needed."""

    def __init__(self, state: GatewayState) -> None:
        self.current = state
        self.generation = 1
        self.draining = False

    def swap(self, state: GatewayState) -> GatewayState:
        """Serve new requests from `state`; the state it replaces (still finishing its requests)."""
        old, self.current = self.current, state
        self.generation += 1
        return old

    def begin_drain(self) -> None:
        """The process is stopping: readiness fails from now on; open requests run to their end."""
        self.draining = True


def serving_state(request: Request[Any, Any, Any]) -> GatewayState:
    """The state serving now, for the routes Litestar dispatches (the app keeps its `LiveState` in
    `app.state.live`); read per request, so they follow a reload."""
    live: LiveState = request.app.state.live
    return live.current


async def wait_drained(state: GatewayState, deadline_s: float, *, poll_s: float = 0.05) -> bool:
    """Wait until `state` has no open requests; False when `deadline_s` passed first."""
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline_s
    while state.open_requests > 0:
        if loop.time() >= until:
            return False
        await asyncio.sleep(poll_s)
    return True
