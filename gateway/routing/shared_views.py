"""The `RoutingStats` and `Breakers` faces of a `RedisRoutingState`: what the dispatcher and
the policies are handed, each method passing straight to the shared state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.backend import BackendLoad
from gateway.routing.interfaces import Admission, BackendStats, BreakerSnapshot

if TYPE_CHECKING:
    from gateway.routing.shared_redis import RedisRoutingState


class SharedStats:
    """`RoutingStats` of a `RedisRoutingState`."""

    def __init__(self, state: RedisRoutingState) -> None:
        self._state = state

    def get(self, backend: str) -> BackendStats:
        return self._state.get_stats(backend)

    def started(self, backend: str) -> None:
        self._state.started(backend)

    def first_token(self, backend: str, ttft_s: float) -> None:
        self._state.first_token(backend, ttft_s)

    def finished(
        self, backend: str, *, ok: bool | None, e2e_s: float, ttft_s: float | None, output_tokens: int | None
    ) -> None:
        self._state.finished(backend, ok=ok, e2e_s=e2e_s, ttft_s=ttft_s, output_tokens=output_tokens)

    def observe_load(self, backend: str, load: BackendLoad) -> None:
        self._state.observe_load(backend, load)


class SharedBreakers:
    """`Breakers` of a `RedisRoutingState`."""

    def __init__(self, state: RedisRoutingState) -> None:
        self._state = state

    def snapshot(self, backend: str) -> BreakerSnapshot:
        return self._state.breaker_snapshot(backend)

    def admission(self, backend: str) -> Admission:
        return self._state.admission(backend)

    async def acquire_probe(self, backend: str) -> bool:
        return await self._state.acquire_probe(backend)

    def record(self, backend: str, *, ok: bool, hard: bool = False) -> None:
        self._state.record(backend, ok=ok, hard=hard)

    def release_probe(self, backend: str) -> None:
        self._state.release_probe(backend)
