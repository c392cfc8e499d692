"""Prometheus metrics of speculative decoding, per route and pair (reference §5.6).

Acceptance rate = accepted / drafted tokens; tokens per target call = output tokens / target calls;
both are ratios of these counters (rate() each in PromQL). The chosen k is a histogram, fallbacks
count by reason, and the estimated speedup is the last request's prediction from its measured costs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.speculative.pair import RequestSpeculation, SpeculativePair

_K_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 32)


class SpeculativeMetrics:
    """Counters fed once per request of a route with a pair (never per token)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("route", "pair")
        self.requests = Counter("gateway_speculative_requests", "Requests on routes with a speculative pair, "
                                "by mode: speculative or plain", (*labels, "mode"), registry=registry)
        self.fallbacks = Counter("gateway_speculative_fallbacks", "Requests (or the rest of one) decoded "
                                 "plainly, by reason", (*labels, "reason"), registry=registry)
        self.rounds = Counter("gateway_speculative_rounds", "Verified draft rounds", labels, registry=registry)
        self.drafted = Counter("gateway_speculative_drafted_tokens", "Tokens proposed by the draft", labels,
                               registry=registry)
        self.accepted = Counter("gateway_speculative_accepted_tokens", "Drafted tokens the target accepted",
                                labels, registry=registry)
        self.target_calls = Counter("gateway_speculative_target_calls", "Calls to the target (verify and plain)",
                                    labels, registry=registry)
        self.output_tokens = Counter("gateway_speculative_output_tokens", "Tokens committed to clients", labels,
                                     registry=registry)
        self.k = Histogram("gateway_speculative_chosen_k", "Drafts per round chosen (0: a plain step)", labels,
                           buckets=_K_BUCKETS, registry=registry)
        self.speedup = Gauge("gateway_speculative_estimated_speedup", "Predicted speedup over the target alone, "
                             "from the last request's measured acceptance and costs", labels, registry=registry)

    def observe(self, pair: SpeculativePair, request: RequestSpeculation | None, reason: str | None) -> None:
        """One finished request: served speculatively (`request`), or plainly for `reason`."""
        labels = (pair.route, pair.name)
        if request is None:
            self.requests.labels(*labels, "plain").inc()
            self.fallbacks.labels(*labels, reason or "unknown").inc()
            return
        d = request.decoder
        self.requests.labels(*labels, "speculative").inc()
        if d.fallback_reason is not None:
            self.fallbacks.labels(*labels, d.fallback_reason).inc()
        self.rounds.labels(*labels).inc(d.rounds)
        self.drafted.labels(*labels).inc(d.drafted)
        self.accepted.labels(*labels).inc(d.accepted)
        self.target_calls.labels(*labels).inc(d.target_calls)
        self.output_tokens.labels(*labels).inc(request.output_tokens)
        histogram = self.k.labels(*labels)
        for k, n in request.k_chosen.items():
            for _ in range(n):
                histogram.observe(k)
        if pair.totals.estimated_speedup is not None:
            self.speedup.labels(*labels).set(pair.totals.estimated_speedup)

