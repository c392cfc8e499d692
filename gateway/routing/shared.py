"""Routing state (statistics, in-flight counts, breakers): in process, or shared through Redis.

`make_routing_state` picks the implementation from the config: `LocalRoutingState` for one
gateway process, `RedisRoutingState` (`gateway/routing/shared_redis.py`) when replicas share a
Redis. Policies and the dispatcher see only `RoutingState.stats` and `RoutingState.breakers`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from gateway.config import GatewayConfig, RoutingConfig
from gateway.routing.breaker import LocalBreakers
from gateway.routing.interfaces import Breakers, RoutingStats
from gateway.routing.shared_redis import RedisRoutingState, SharedChange
from gateway.routing.stats import LocalStats

__all__ = ["LocalRoutingState", "RedisRoutingState", "RoutingState", "make_routing_state"]

Clock = Callable[[], float]


class RoutingState(Protocol):
    """Statistics and breakers for every backend, with where they live."""

    stats: RoutingStats
    breakers: Breakers
    shared: bool  # backed by Redis

    @property
    def shared_ok(self) -> bool:
        """Redis answers right now (always True in process)."""
        ...

    def describe(self) -> str:
        """Where the state lives, for logs: `in-process` or `redis at host:port`."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class LocalRoutingState:
    """Routing state of this process alone: the embedded default, and what tests hand policies."""

    shared: bool = False

    def __init__(self, config: RoutingConfig, clock: Clock = time.time) -> None:
        self.stats: RoutingStats = LocalStats(config.stats.half_life_s, clock)
        self.breakers: Breakers = LocalBreakers(config.breaker, clock)

    @property
    def shared_ok(self) -> bool:
        return True

    def describe(self) -> str:
        return "in-process"

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def make_routing_state(
    config: GatewayConfig, clock: Clock = time.time, on_shared_change: SharedChange | None = None
) -> RoutingState:
    """Shared through Redis when the config names one, in process otherwise."""
    if config.redis is None:
        return LocalRoutingState(config.routing, clock)
    return RedisRoutingState(config.redis, [b.name for b in config.backends], config.routing,
                             clock=clock, on_shared_change=on_shared_change)
