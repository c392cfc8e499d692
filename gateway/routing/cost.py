"""What a request costs on a backend, and the `cost` policy: the cheapest backend meeting the SLO.

A backend is priced per million input and output tokens, by the GPU-hour, or both (a
machine plus a per-token fee). A GPU-hour is turned into dollars per output token through
the output throughput the gateway measures on that backend: the machine's time is spent
producing output tokens, prompt processing included, so the whole hour is charged to them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import NamedTuple

from gateway.backend import Backend
from gateway.config import BackendConfig, SloConfig
from gateway.routing.interfaces import BackendStats, RequestFeatures, RouteChoice, RoutingStats
from gateway.routing.latency import Explorer, Prediction, Scored, least_in_flight, score, seconds, split


class TokenPrices(NamedTuple):
    """US dollars per input token and per output token."""

    input_usd: float
    output_usd: float


def token_prices(config: BackendConfig, stats: BackendStats) -> TokenPrices | None:
    """The backend's prices per token now; None while a GPU-hour price has no measured
    throughput to be divided by (a backend not yet observed has no known cost)."""
    cost = config.cost
    input_usd = cost.input_per_mtok / 1e6
    output_usd = cost.output_per_mtok / 1e6
    if cost.gpu_hour_usd is not None:
        throughput = stats.output_tokens_per_s
        if throughput is None or throughput <= 0:
            return None
        output_usd += cost.gpu_hour_usd / 3600.0 / throughput
    return TokenPrices(input_usd, output_usd)


def has_price(config: BackendConfig) -> bool:
    """False for a backend with no price at all (the default): its requests cost nothing, and
    the hot path skips reading statistics and counting the prompt for them."""
    cost = config.cost
    return cost.gpu_hour_usd is not None or cost.input_per_mtok > 0 or cost.output_per_mtok > 0


def request_cost_usd(
    backend_config: BackendConfig, stats: BackendStats, prompt_tokens: int, completion_tokens: int
) -> float:
    """A served request's cost in US dollars (for `x-gateway-cost-usd` and accounting).

    While a GPU-hour backend's throughput is still unmeasured its machine time cannot be
    apportioned, so only its per-token prices (if any) are counted.
    """
    prices = token_prices(backend_config, stats)
    if prices is None:
        cost = backend_config.cost
        prices = TokenPrices(cost.input_per_mtok / 1e6, cost.output_per_mtok / 1e6)
    return prompt_tokens * prices.input_usd + completion_tokens * prices.output_usd


def describe_slo(slo: SloConfig) -> str:
    """`ttft<=500ms e2e<=3000ms`, or `none` when the route sets no objective."""
    parts = []
    if slo.ttft_ms is not None:
        parts.append(f"ttft<={slo.ttft_ms:g}ms")
    if slo.e2e_ms is not None:
        parts.append(f"e2e<={slo.e2e_ms:g}ms")
    return " ".join(parts) or "none"


def meets_slo(prediction: Prediction, slo: SloConfig) -> bool:
    """True when the predicted times are within every objective the route sets."""
    if slo.ttft_ms is not None and prediction.ttft_s * 1000.0 > slo.ttft_ms:
        return False
    return slo.e2e_ms is None or prediction.total_s * 1000.0 <= slo.e2e_ms


def usd(value: float) -> str:
    """Dollars for a reason string: two significant digits, no exponent ($0.00012, $1.50)."""
    if value <= 0:
        return "$0"
    return f"${value:.{max(2, 1 - math.floor(math.log10(value)))}f}"


class _Priced(NamedTuple):
    scored: Scored
    cost_usd: float
    meets: bool


class CostPolicy:
    """The cheapest backend whose predicted latency meets the route's SLO; the fastest when none does.

    Cost is this request's: its estimated input tokens at the input price plus its expected
    output tokens at the output price. Meeting the SLO uses the `latency` prediction,
    queueing included, so the cheapest backend takes traffic until it would be too slow and
    the next cheapest takes the overflow. A backend whose cost or speed is not known yet is
    explored gently (one request at a time) and otherwise ranked after the known ones.
    """

    name = "cost"

    def __init__(self, slo: SloConfig, explore_ratio: float, rng: random.Random) -> None:
        self.slo = slo
        self.rng = rng
        self.explorer = Explorer(explore_ratio, rng)
        self._slo_text = describe_slo(slo)

    def rank(self, candidates: Sequence[Backend], request: RequestFeatures, stats: RoutingStats) -> list[RouteChoice]:
        if not candidates:
            return []
        scored, tokens = score(candidates, request, stats)
        known, unseen, failing = split(scored)
        priced: list[_Priced] = []
        unpriced: list[Scored] = []
        for s in known:
            prices = token_prices(s.backend.config, s.stats)
            if prices is None:
                unpriced.append(s)
                continue
            assert s.prediction is not None
            cost = request.input_tokens * prices.input_usd + tokens * prices.output_usd
            priced.append(_Priced(s, cost, meets_slo(s.prediction, self.slo)))
        # Meeting the SLO: cheapest first (faster among equals); missing it: fastest first.
        ordered = sorted((p for p in priced if p.meets), key=lambda p: (p.cost_usd, _total(p.scored)))
        ordered += [p for p in priced if not p.meets]
        explored = self.explorer.choose(unseen + unpriced, [p.scored for p in ordered[1:]] + failing)
        if explored is not None:
            first, reason = explored
        elif ordered:
            first, reason = ordered[0].scored, self._reason(ordered[0])
        else:
            first = least_in_flight(unseen + unpriced + failing, self.rng)
            reason = "explore: no cost known on any backend, fewest in flight"
        choices = [RouteChoice(first.backend, reason)]
        for p in ordered:
            if p.scored is not first:
                verdict = "meets slo" if p.meets else f"misses slo, predicted {seconds(_total(p.scored))}"
                choices.append(RouteChoice(p.scored.backend, f"cost fallback: {usd(p.cost_usd)} {verdict}"))
        for s in unpriced + sorted(unseen, key=lambda s: s.stats.in_flight) + failing:
            if s is not first:
                choices.append(RouteChoice(s.backend, "cost fallback: cost unknown yet"))
        return choices

    def _reason(self, p: _Priced) -> str:
        total = seconds(_total(p.scored))
        if not p.meets:
            return f"cost: none meets slo {self._slo_text}, fastest predicted {total} ({usd(p.cost_usd)})"
        if self._slo_text == "none":
            return f"cost: cheapest {usd(p.cost_usd)} (no slo), predicted {total}"
        assert p.scored.prediction is not None
        ttft = seconds(p.scored.prediction.ttft_s)
        return f"cost: {usd(p.cost_usd)} meets slo {self._slo_text} (predicted ttft {ttft})"


def _total(s: Scored) -> float:
    assert s.prediction is not None
    return s.prediction.total_s
