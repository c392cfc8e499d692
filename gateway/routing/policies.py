"""Policies order a route's candidates; the dispatcher tries them in that order."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

from gateway.backend import Backend
from gateway.routing.health import HealthState


class Policy(Protocol):
    """Orders candidates for one request; unhealthy backends are left out."""

    name: str

    def order(self, candidates: Sequence[Backend], health: HealthState) -> list[Backend]: ...


class FirstHealthyPolicy:
    """The first healthy backend in config order, the next ones as fallbacks."""

    name = "first_healthy"

    def order(self, candidates: Sequence[Backend], health: HealthState) -> list[Backend]:
        return [b for b in candidates if health.is_healthy(b.name)]


class RoundRobinPolicy:
    """Rotates the starting backend per request; the others follow as fallbacks."""

    name = "round_robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def order(self, candidates: Sequence[Backend], health: HealthState) -> list[Backend]:
        healthy = [b for b in candidates if health.is_healthy(b.name)]
        if not healthy:
            return healthy
        start = next(self._counter) % len(healthy)
        return healthy[start:] + healthy[:start]


def make_policy(name: str) -> Policy:
    """A fresh policy instance (per route, so round-robin counters are independent)."""
    if name == "first_healthy":
        return FirstHealthyPolicy()
    if name == "round_robin":
        return RoundRobinPolicy()
    raise ValueError(f"unknown policy {name!r}")
