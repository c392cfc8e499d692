"""Backend health: active checks on an interval plus passive marks from failed requests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from gateway.backend import Backend
from gateway.routing.periodic import PeriodicTask

log = logging.getLogger("gateway.health")


class HealthState:
    """Healthy-or-not per backend name; a backend never checked counts as healthy."""

    def __init__(self) -> None:
        self._healthy: dict[str, bool] = {}
        self.reasons: dict[str, str] = {}

    def is_healthy(self, name: str) -> bool:
        return self._healthy.get(name, True)

    def mark(self, name: str, healthy: bool, reason: str = "") -> None:
        previous = self._healthy.get(name)
        self._healthy[name] = healthy
        if healthy:
            self.reasons.pop(name, None)
        else:
            self.reasons[name] = reason or "health check failed"
        if previous is not None and previous != healthy:
            log.warning("backend %s is now %s%s", name, "healthy" if healthy else "unhealthy",
                        "" if healthy else f": {self.reasons[name]}")

    def any_healthy(self, names: Sequence[str]) -> bool:
        return any(self.is_healthy(n) for n in names)

    def snapshot(self) -> dict[str, bool]:
        return dict(self._healthy)


class HealthMonitor:
    """Polls every backend's `health()`; the sleep function is injected for tests."""

    def __init__(
        self,
        backends: Sequence[Backend],
        state: HealthState,
        interval_s: float,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._backends = backends
        self.state = state
        self._on_change = on_change
        self._periodic = PeriodicTask("health-monitor", self.check_once, interval_s, sleep)

    async def check_once(self) -> None:
        """Check every backend concurrently and record the results."""
        results = await asyncio.gather(*(self._check(b) for b in self._backends))
        for backend, (healthy, reason) in zip(self._backends, results, strict=True):
            self.state.mark(backend.name, healthy, reason)
            if self._on_change is not None:
                self._on_change(backend.name, healthy)

    @staticmethod
    async def _check(backend: Backend) -> tuple[bool, str]:
        try:
            healthy = await backend.health()
        except Exception as err:  # a plugin's bug must not stop the monitor
            return False, f"health check raised {type(err).__name__}: {err}"
        return healthy, "" if healthy else "health check failed"

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
