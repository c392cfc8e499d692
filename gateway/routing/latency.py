"""A request's predicted completion time on each backend, and the `latency` policy built on it.

The prediction is the backend's measured TTFT plus its time per output token times the tokens
this request is expected to produce, plus the wait for a free slot when the backend already
has as much work as it runs at once. The `cost` policy reads the same prediction to decide
whether a backend meets the route's SLO.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

from gateway.backend import Backend
from gateway.routing.interfaces import BackendStats, RequestFeatures, RouteChoice, RoutingStats

# Output tokens assumed for a request with no `max_tokens` before any backend has reported
# a mean: about one paragraph, the same for every backend, so it never changes the ranking.
DEFAULT_OUTPUT_TOKENS = 128
# Backends predicted within this factor of the best take part in the random two-choice
# draw; a backend further behind is never picked except to explore.
COMPETITIVE_SLACK = 1.5
# A backend that fails this often is avoided as if a failure cost a retry elsewhere; capped
# so the penalty stays finite (the circuit breaker removes a backend that always fails).
_MAX_ERROR_RATE = 0.9


def seconds(value: float) -> str:
    """A duration for a reason string: three significant digits, no exponent."""
    return f"{value:.3g}s" if value < 100 else f"{value:.0f}s"


def outstanding(stats: BackendStats) -> float:
    """Requests on the backend now: the gateway's own in flight plus the engine's running and
    queued work from other clients (the load monitor takes the gateway's requests out of the
    engine's counts, so none is counted twice, and ours stay exact between polls)."""
    return float(stats.in_flight) + (stats.running or 0.0) + (stats.queued or 0.0)


def slots(backend: Backend, stats: BackendStats) -> float:
    """Requests the backend runs at once: the engine's own figure, else the configured
    concurrency limit, else one.

    One slot when nothing says otherwise is peak-EWMA's (pending + 1) rule: every request
    already there is assumed to be served before this one. It can only overestimate a busy
    backend whose parallelism is unknown, so load spreads a little early, never piles up.
    """
    if stats.capacity is not None and stats.capacity >= 1:
        return stats.capacity
    limit = backend.config.max_concurrency
    return float(limit) if limit is not None and limit >= 1 else 1.0


def typical_output_tokens(stats: Sequence[BackendStats]) -> float:
    """The route's mean output tokens per request, weighted by samples across its backends,
    else `DEFAULT_OUTPUT_TOKENS`."""
    weight = sum(s.samples for s in stats if s.output_tokens is not None)
    if weight <= 0:
        return float(DEFAULT_OUTPUT_TOKENS)
    return sum(s.output_tokens * s.samples for s in stats if s.output_tokens is not None) / weight


def expected_output_tokens(request: RequestFeatures, stats: Sequence[BackendStats]) -> float:
    """Output tokens this request will probably produce: the route's typical figure, capped by
    its `max_tokens`.

    One figure for every candidate: the same model writes the same answer wherever it runs,
    and a backend that happened to get short requests must not look faster for it.
    """
    typical = typical_output_tokens(stats)
    cap = request.max_output_tokens
    return max(1.0, min(float(cap), typical) if cap is not None else typical)


class Prediction(NamedTuple):
    """Predicted seconds from sending a request to its first and to its last token."""

    ttft_s: float
    total_s: float


def service_time(stats: BackendStats, output_tokens: float) -> Prediction | None:
    """Time on the backend once it runs a request, from its measured latencies (no queueing)."""
    ttft, tpot, e2e = stats.ttft_s, stats.tpot_s, stats.e2e_s
    if tpot is not None and (ttft is not None or e2e is not None):
        if ttft is None:  # non-streaming traffic only: the first token is never seen
            assert e2e is not None
            ttft = max(0.0, e2e - tpot * max(0.0, (stats.output_tokens or 1.0) - 1.0))
        return Prediction(ttft, ttft + tpot * max(0.0, output_tokens - 1.0))
    if e2e is not None:
        # No per-token figure yet: the whole time is the only honest answer for both.
        return Prediction(e2e if ttft is None else ttft, e2e)
    return None


def predict(backend: Backend, stats: BackendStats, output_tokens: float) -> Prediction | None:
    """This request's predicted times on `backend`, None before any finished request there.

    Past the backend's slots a request waits for one to free: each slot frees once per typical
    request (the backend's own mean output length), so the wait is the requests ahead of it
    divided by the slots, times that typical time.
    """
    if stats.samples <= 0:
        return None
    service = service_time(stats, output_tokens)
    if service is None:
        return None
    capacity = slots(backend, stats)
    ahead = outstanding(stats) + 1.0 - capacity
    wait = 0.0
    if ahead > 0:
        typical = service_time(stats, stats.output_tokens or output_tokens)
        assert typical is not None
        wait = ahead / capacity * typical.total_s
    penalty = 1.0 / (1.0 - min(stats.error_rate, _MAX_ERROR_RATE))
    return Prediction((service.ttft_s + wait) * penalty, (service.total_s + wait) * penalty)


class Scored(NamedTuple):
    """A candidate with its statistics and prediction (None when it has none yet)."""

    backend: Backend
    stats: BackendStats
    prediction: Prediction | None


def score(
    candidates: Sequence[Backend], request: RequestFeatures, stats: RoutingStats
) -> tuple[list[Scored], float]:
    """Every candidate's prediction for this request, in candidate order, and the output
    tokens the predictions assume."""
    snapshot = [(b, stats.get(b.name)) for b in candidates]
    tokens = expected_output_tokens(request, [s for _, s in snapshot])
    return [Scored(b, s, predict(b, s, tokens)) for b, s in snapshot], tokens


class Explorer:
    """Sends some requests to a backend other than the policy's pick, so it gets measured.

    A backend never observed is tried whenever it has nothing in flight: at most one request
    at a time until its first answer, so a new (or slow, or broken) backend is measured at
    once but never flooded. Among measured backends, `ratio` of requests go to a random one
    that is not the pick and has nothing in flight, which refreshes numbers that stopped
    changing because the backend stopped getting traffic (a backend that recovered).
    """

    def __init__(self, ratio: float, rng: random.Random) -> None:
        self.ratio = ratio
        self.rng = rng

    def choose(self, unseen: Sequence[Scored], others: Sequence[Scored]) -> tuple[Scored, str] | None:
        """`unseen`: never observed; `others`: measured, not the pick. The one to explore, and why."""
        idle = [s for s in unseen if s.stats.in_flight == 0]
        if idle:
            return self.rng.choice(idle), "explore: no samples yet"
        if others and self.ratio > 0 and self.rng.random() < self.ratio:
            idle = [s for s in others if s.stats.in_flight == 0]
            if idle:
                chosen = self.rng.choice(idle)
                if chosen.prediction is None:
                    return chosen, f"explore: {self.ratio:.0%} probe, no usable samples"
                return chosen, f"explore: {self.ratio:.0%} probe, predicted {seconds(chosen.prediction.total_s)}"
        return None


def split(scored: Sequence[Scored]) -> tuple[list[Scored], list[Scored], list[Scored]]:
    """(measured, fastest first; never observed; observed but no latency, e.g. only errors)."""
    known = sorted((s for s in scored if s.prediction is not None), key=_total)
    unseen = [s for s in scored if s.prediction is None and s.stats.samples <= 0]
    failing = [s for s in scored if s.prediction is None and s.stats.samples > 0]
    return known, unseen, failing


def _total(s: Scored) -> float:
    assert s.prediction is not None
    return s.prediction.total_s


def least_in_flight(scored: Sequence[Scored], rng: random.Random) -> Scored:
    """The candidate with the fewest requests open, ties broken at random."""
    fewest = min(s.stats.in_flight for s in scored)
    return rng.choice([s for s in scored if s.stats.in_flight == fewest])


class LatencyPolicy:
    """Routes to the backend with the shortest predicted completion time for this request.

    The two choices of power-of-two-choices are drawn from the *competitive* backends, those
    predicted within `COMPETITIVE_SLACK` of the best: plain P2C over three backends pairs
    the fastest in only two draws of three, whereas drawing among near-equals keeps the
    randomness that stops gateway replicas from herding onto one backend (from three
    competitive backends up; of two, the better always wins its pair). When only one backend
    is competitive it is taken directly. Backends are explored as `Explorer` says. Fallbacks
    follow in predicted order, then the backends without a prediction.
    """

    name = "latency"

    def __init__(self, explore_ratio: float, rng: random.Random) -> None:
        self.rng = rng
        self.explorer = Explorer(explore_ratio, rng)

    def rank(self, candidates: Sequence[Backend], request: RequestFeatures, stats: RoutingStats) -> list[RouteChoice]:
        if not candidates:
            return []
        scored, _ = score(candidates, request, stats)
        known, unseen, failing = split(scored)
        explored = self.explorer.choose(unseen, known[1:] + failing)
        if explored is not None:
            first, reason = explored
        elif known:
            first, reason = self._pick(known)
        else:
            first = least_in_flight(unseen + failing, self.rng)
            reason = "explore: no samples on any backend, fewest in flight"
        choices = [RouteChoice(first.backend, reason)]
        for s in known:
            if s is not first:
                assert s.prediction is not None
                choices.append(RouteChoice(s.backend, f"latency fallback: predicted {seconds(s.prediction.total_s)}"))
        for s in sorted(unseen, key=lambda s: s.stats.in_flight) + failing:
            if s is not first:
                choices.append(RouteChoice(s.backend, "latency fallback: no samples yet"))
        return choices

    def _pick(self, known: list[Scored]) -> tuple[Scored, str]:
        best = _total(known[0])
        competitive = [s for s in known if _total(s) <= best * COMPETITIVE_SLACK]
        if len(competitive) == 1:
            if len(known) == 1:
                return known[0], f"latency: predicted {seconds(best)} (only measured backend)"
            return known[0], f"latency: predicted {seconds(best)} vs next {seconds(_total(known[1]))}"
        a, b = self.rng.sample(competitive, 2)
        if _total(b) < _total(a):
            a, b = b, a
        return a, f"latency: predicted {seconds(_total(a))} vs {seconds(_total(b))} (p2c of {len(competitive)})"
