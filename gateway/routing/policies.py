"""The routing policies by name, and the simple ones that need no prediction.

Every policy ranks a route's available candidates for one request (`Policy.rank`): the first
is tried, the rest are fallbacks, each with the reason sent as `x-gateway-route-reason`.
`latency` and `cost` live in their own modules (`latency.py`, `cost.py`), as does
`prefix_affinity` (`prefix.py`).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Sequence

from gateway.backend import Backend
from gateway.config import RouteConfig, StatsConfig
from gateway.routing.affinity import PrefixAffinityPolicy
from gateway.routing.cost import CostPolicy
from gateway.routing.interfaces import Policy, RequestFeatures, RouteChoice, RoutingStats
from gateway.routing.latency import LatencyPolicy, outstanding, slots


class FirstHealthyPolicy:
    """The first available backend in config order, the next ones as fallbacks."""

    name = "first_healthy"

    def rank(self, candidates: Sequence[Backend], request: RequestFeatures, stats: RoutingStats) -> list[RouteChoice]:
        return [
            RouteChoice(b, "first_healthy: first available in config order" if i == 0
                        else f"first_healthy fallback: #{i + 1} in config order")
            for i, b in enumerate(candidates)
        ]


class RoundRobinPolicy:
    """Rotates the starting backend per request over the available ones; the others follow in order."""

    name = "round_robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def rank(self, candidates: Sequence[Backend], request: RequestFeatures, stats: RoutingStats) -> list[RouteChoice]:
        if not candidates:
            return []
        start = next(self._counter) % len(candidates)
        ordered = list(candidates[start:]) + list(candidates[:start])
        return [RouteChoice(ordered[0], f"round_robin: turn {start + 1} of {len(ordered)}")] + [
            RouteChoice(b, "round_robin fallback: next in rotation") for b in ordered[1:]
        ]


class WeightedPolicy:
    """Shares traffic by `BackendConfig.weight`, with nginx's smooth weighted round-robin.

    Deterministic and smooth: weights 5:1:1 give a a b a c a a, never five a's in a row, and
    the shares hold over any window of one cycle. A weight of 0 takes no traffic but remains
    a fallback. Fallbacks follow by weight, heaviest first.
    """

    name = "weighted"

    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def rank(self, candidates: Sequence[Backend], request: RequestFeatures, stats: RoutingStats) -> list[RouteChoice]:
        if not candidates:
            return []
        weights = [(b, max(0.0, b.config.weight)) for b in candidates]
        total = sum(w for _, w in weights)
        by_weight = sorted(weights, key=lambda bw: -bw[1])  # stable: config order among equals
        if total <= 0:
            return [RouteChoice(b, "weighted: every weight is 0, config order") for b, _ in weights]
        current = self._current
        pick, pick_weight, best = weights[0][0], 0.0, -float("inf")
        for backend, weight in weights:
            value = current.get(backend.name, 0.0) + weight
            current[backend.name] = value
            if value > best:
                pick, pick_weight, best = backend, weight, value
        current[pick.name] -= total
        choices = [RouteChoice(pick, f"weighted: weight {pick_weight:g} of {total:g}")]
        choices += [RouteChoice(b, f"weighted fallback: weight {w:g}") for b, w in by_weight if b is not pick]
        return choices


class LeastLoadedPolicy:
    """The backend with the fewest requests per slot: in flight plus other clients' running + queued
    over its capacity (engine-reported, else `max_concurrency`, else 1). Ties rotate, starting
    one further along the config order on each request, so equals share the traffic."""

    name = "least_loaded"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def rank(self, candidates: Sequence[Backend], request: RequestFeatures, stats: RoutingStats) -> list[RouteChoice]:
        if not candidates:
            return []
        count = len(candidates)
        offset = next(self._counter) % count
        rows = []
        for i, backend in enumerate(candidates):
            backend_stats = stats.get(backend.name)
            busy, capacity = outstanding(backend_stats), slots(backend, backend_stats)
            rows.append((busy / capacity, (i - offset) % count, backend, busy, capacity))
        rows.sort(key=lambda row: (row[0], row[1]))
        return [
            RouteChoice(backend, f"least_loaded{'' if n == 0 else ' fallback'}: {busy:g}/{capacity:g} slots busy")
            for n, (_, _, backend, busy, capacity) in enumerate(rows)
        ]


PolicyFactory = Callable[[RouteConfig, StatsConfig, random.Random, Callable[[], float]], Policy]

_FACTORIES: dict[str, PolicyFactory] = {
    "first_healthy": lambda route, stats, rng, clock: FirstHealthyPolicy(),
    "round_robin": lambda route, stats, rng, clock: RoundRobinPolicy(),
    "weighted": lambda route, stats, rng, clock: WeightedPolicy(),
    "least_loaded": lambda route, stats, rng, clock: LeastLoadedPolicy(),
    "latency": lambda route, stats, rng, clock: LatencyPolicy(stats.explore_ratio, rng),
    "cost": lambda route, stats, rng, clock: CostPolicy(route.slo, stats.explore_ratio, rng),
    "prefix_affinity": lambda route, stats, rng, clock: PrefixAffinityPolicy(
        clock=clock, half_life_s=stats.half_life_s
    ),
}


def make_policy(
    name: str,
    route: RouteConfig,
    stats_config: StatsConfig,
    *,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.time,
) -> Policy:
    """A new policy instance for one route (and one per-request override name).

    Construction is cheap, but most policies keep state between requests (rotation counters,
    smooth-weighted-round-robin weights, the prefix table), so build one per (route, name)
    and keep it; a policy built per request would forget its place every time.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown policy {name!r} (known: {', '.join(_FACTORIES)})")
    return factory(route, stats_config, rng or random.Random(), clock)
