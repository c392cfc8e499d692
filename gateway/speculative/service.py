"""The gateway's speculative pairs, one per route with a `speculative` section.

Started after the backends (their URLs are final then), each pair probed once; a pair whose probe
could not reach a backend is probed again every `interval_s` until it gets an answer. Every request
on such a route is booked here: served speculatively, or plainly with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from gateway.backend import Backend
from gateway.config import GatewayConfig
from gateway.routing.periodic import PeriodicTask
from gateway.speculative.pair import RequestSpeculation, SpeculativePair
from gateway.speculative.settings import NGRAM

log = logging.getLogger("gateway.speculative")

RequestObserver = Callable[[SpeculativePair, RequestSpeculation | None, str | None], None]


class SpeculativeService:
    """Routes' pairs by route model; `get` is the hot-path lookup (None for most routes)."""

    def __init__(
        self,
        config: GatewayConfig,
        backends: Mapping[str, Backend],
        *,
        target_waiting: Callable[[str], float | None] = lambda name: None,
        on_request: RequestObserver | None = None,
        interval_s: float = 5.0,
    ) -> None:
        self.pairs: dict[str, SpeculativePair] = {}
        for route in config.routes:
            spec = route.speculative
            if spec is None:
                continue
            draft = None if spec.draft == NGRAM else backends[spec.draft]
            self.pairs[route.model] = SpeculativePair(
                route.model, spec, backends[spec.target], draft,
                target_waiting=_bound(target_waiting, spec.target), on_request=on_request,
            )
        self._recheck = PeriodicTask("speculative-probe", self._recheck_all, interval_s)

    def get(self, route: str) -> SpeculativePair | None:
        return self.pairs.get(route) if self.pairs else None

    async def start(self) -> None:
        """Build and probe every pair (in parallel); a pair that cannot even be built runs plain."""
        if not self.pairs:
            return
        results = await asyncio.gather(*(pair.start() for pair in self.pairs.values()), return_exceptions=True)
        for pair, result in zip(self.pairs.values(), results, strict=True):
            if isinstance(result, BaseException):
                pair.state, pair.reason = "plain", f"could not be set up: {result}"
                log.warning("speculative pair %s on route %s runs plain decoding: %s", pair.name, pair.route,
                            pair.reason)
        self._recheck.start()

    async def _recheck_all(self) -> None:
        for pair in self.pairs.values():
            try:
                await pair.recheck()
            except Exception:  # a probe must never end the loop
                log.exception("re-probing speculative pair %s failed", pair.name)

    def describe(self) -> list[dict[str, Any]]:
        return [pair.describe() for pair in self.pairs.values()]

    def by_backend(self) -> dict[str, list[dict[str, Any]]]:
        """Each backend's pairs (as target or draft) with their state and reason, for /admin/backends."""
        out: dict[str, list[dict[str, Any]]] = {}
        for pair in self.pairs.values():
            entry = {"route": pair.route, "pair": pair.name, "state": pair.state, "reason": pair.reason}
            out.setdefault(pair.config.target, []).append({**entry, "role": "target"})
            if pair.config.draft != NGRAM:
                out.setdefault(pair.config.draft, []).append({**entry, "role": "draft"})
        return out

    async def stop_rechecks(self) -> None:
        """Stop re-probing; the pairs keep serving the requests they have (a replaced state's)."""
        await self._recheck.stop()

    async def aclose(self) -> None:
        await self._recheck.stop()
        await asyncio.gather(*(pair.aclose() for pair in self.pairs.values()), return_exceptions=True)


def _bound(read: Callable[[str], float | None], name: str) -> Callable[[], float | None]:
    """`read(name)` as a callable of no arguments (one per pair's target)."""
    return lambda: read(name)
