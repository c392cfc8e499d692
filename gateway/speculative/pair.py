"""One route's draft/target pair at run time: its clients, its capability probe, its learned costs.

Built once per route with a `speculative` section, after the backends have started (a launched
llama.cpp server only knows its port then). `start` probes the pair (§5.1); a pair that fails runs
every request plainly on the route and says why (`describe`, /admin/speculative, /admin/backends,
the log). A probe that could not reach a backend is retried by `recheck`, since a backend that was
still loading at start-up should not leave the route plain for good.

Per request, `begin` hands out a fresh decoder: an `AdaptiveK` seeded from what earlier requests
measured (acceptance, target decode time, verify and draft costs), so a new request starts from the
pair's real costs rather than from a guess.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from gateway.backend import Backend
from gateway.speculative.adaptive_k import AdaptiveK, AdaptiveKConfig, SpeculationPrior
from gateway.speculative.backends import build_codec, build_drafter_factory, build_target
from gateway.speculative.codec import ChatCodec
from gateway.speculative.coordinator import SpeculativeDecoder
from gateway.speculative.interfaces import Drafter, RoundResult, Target, Verification
from gateway.speculative.ngram import RecentResponses
from gateway.speculative.pair_probe import probe_pair_capabilities
from gateway.speculative.policy import SpeculationPolicy
from gateway.speculative.settings import NGRAM, PLAIN_TARGETS, SpeculativeConfig

log = logging.getLogger("gateway.speculative")

PairState = Literal["probing", "ready", "plain"]
# Tenants whose recent responses the n-gram drafter keeps (least recently used beyond it dropped):
# drafts never come from another tenant's answers.
_MAX_TENANTS = 256


class TimedTarget:
    """The target with its plain steps timed for the adaptive k (the decoder times only rounds)."""

    def __init__(self, inner: Target, adaptive: AdaptiveK, call_overhead_s: float) -> None:
        self.inner = inner
        self.adaptive = adaptive
        self.call_overhead_s = call_overhead_s
        self.name = inner.name
        self.eos_ids = inner.eos_ids

    async def verify(self, committed: Sequence[int], draft: Sequence[int]) -> Verification:
        return await self.inner.verify(committed, draft)

    async def generate(self, committed: Sequence[int], max_tokens: int) -> AsyncIterator[int]:
        started = time.perf_counter()
        count = 0
        try:
            async with aclosing(self.inner.generate(committed, max_tokens)) as tokens:  # type: ignore[type-var]
                async for token in tokens:
                    count += 1
                    yield token
        finally:
            # The decoder closes a one-token step right after its token, so this runs in `finally`;
            # per-token time leaves out the call's own overhead, which the verify fit knows.
            self.adaptive.observe_plain(count, max(time.perf_counter() - started - self.call_overhead_s, 0.0))


@dataclass
class PairTotals:
    """What the pair did since start-up, for /admin/speculative (Prometheus has the same as counters)."""

    requests: int = 0
    plain_requests: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    target_calls: int = 0
    output_tokens: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)
    k_chosen: dict[int, int] = field(default_factory=dict)
    estimated_speedup: float | None = None


class RequestSpeculation:
    """One request's decoder and its adaptive k; `finish` hands what it learned back to the pair."""

    def __init__(self, pair: SpeculativePair, decoder: SpeculativeDecoder, adaptive: AdaptiveK,
                 k_chosen: dict[int, int], tenant: str) -> None:
        self.pair = pair
        self.decoder = decoder
        self.adaptive = adaptive
        self.k_chosen = k_chosen
        self.tenant = tenant
        self.output_tokens = 0  # what the client got (set by `SpeculativePair.finish`)

    def stats(self) -> dict[str, Any]:
        """The response's `x_speculative` field."""
        d = self.decoder
        return {
            "pair": self.pair.name, "rounds": d.rounds, "drafted": d.drafted, "accepted": d.accepted,
            "target_calls": d.target_calls, "plain_tokens": d.plain_tokens,
            "fallback": d.fallback_reason,
        }

    def header_value(self) -> str:
        d = self.decoder
        return (f"pair={self.pair.name}; rounds={d.rounds}; drafted={d.drafted}; accepted={d.accepted}; "
                f"target_calls={d.target_calls}")


class SpeculativePair:
    """A route's draft/target pair (see the module doc)."""

    def __init__(
        self,
        route: str,
        config: SpeculativeConfig,
        target_backend: Backend,
        draft_backend: Backend | None,
        *,
        target_waiting: Callable[[], float | None] = lambda: None,
        on_request: Callable[[SpeculativePair, RequestSpeculation | None, str | None], None] | None = None,
    ) -> None:
        self.route = route
        self.config = config
        self.target_backend = target_backend
        self.draft_backend = draft_backend
        self.name = f"{config.draft}->{config.target}"
        self.target_waiting = target_waiting
        self.on_request = on_request
        self.state: PairState = "probing"
        self.reason: str | None = "not probed yet"
        self.probe_details: dict[str, Any] = {}
        self.retry_probe = False  # the last probe could not reach a backend: `recheck` tries again
        self.totals = PairTotals()
        self._session: aiohttp.ClientSession | None = None
        self.target: Target | None = None
        self.codec: ChatCodec | None = None
        self._make_drafter: Callable[[Sequence[Sequence[int]]], Drafter] | None = None
        self._recent: OrderedDict[str, RecentResponses] = OrderedDict()
        self._prior = self._initial_prior()

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the clients against the started backends, then probe the pair."""
        plain = PLAIN_TARGETS.get(self.target_backend.plugin)
        if plain is not None:
            self.state, self.reason = "plain", plain
            log.info("speculative pair %s on route %s runs plain decoding: %s", self.name, self.route, plain)
            return
        timeout = aiohttp.ClientTimeout(total=self.target_backend.config.timeouts.total_s)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self.target = build_target(self.target_backend, self._session, self.config.eos_ids,
                                   self.config.prompt_logprobs_below)
        self.codec = build_codec(self.target_backend, self.draft_backend, self._session)
        self._make_drafter = build_drafter_factory(self.config.draft, self.draft_backend, self.codec, self._session)
        await self.probe()

    async def probe(self) -> None:
        """Run the capability probe and set `state`/`reason` (never raises)."""
        assert self.target is not None and self.codec is not None and self._session is not None
        result = await probe_pair_capabilities(self.target, self.codec, self.draft_backend, self._session)
        self.probe_details = result.details
        self.retry_probe = result.unreachable
        if result.ok:
            self.state, self.reason = "ready", None
            log.info("speculative pair %s on route %s: ready (%s)", self.name, self.route, result.summary)
        else:
            self.state, self.reason = "plain", "; ".join(result.reasons)
            log.warning("speculative pair %s on route %s runs plain decoding: %s", self.name, self.route, self.reason)

    async def recheck(self) -> None:
        """Probe again if the last probe could not reach a backend."""
        if self.retry_probe and self.target is not None:
            await self.probe()

    async def aclose(self) -> None:
        """Close the pair's HTTP session (its clients share it and close nothing of their own)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- per request ---------------------------------------------------------------------------

    def plain_reason(self) -> str | None:
        """Why no request speculates right now (probe failed, still probing, target under load), or None."""
        if self.state != "ready":
            return "probe_failed" if self.state == "plain" else "probing"
        limit = self.config.max_target_waiting
        waiting = self.target_waiting()
        if limit is not None and waiting is not None and waiting > limit:
            return "target_load"
        return None

    def begin(self, tenant: str) -> RequestSpeculation:
        """A decoder for one request of `tenant` (call only when `plain_reason()` is None)."""
        assert self.target is not None and self._make_drafter is not None
        c = self.config
        adaptive = AdaptiveK(self._prior, AdaptiveKConfig(max_k=self._max_k(), min_speedup=c.min_speedup,
                                                            reprobe_tokens=c.reprobe_tokens))
        k_chosen: dict[int, int] = {}

        def choose() -> int:
            k = adaptive.choose() if c.k == "auto" else min(c.k, self._max_k())
            k_chosen[k] = k_chosen.get(k, 0) + 1
            return k

        def on_round(result: RoundResult, draft_s: float, verify_s: float) -> None:
            adaptive.observe_round(result.drafted, result.accepted, draft_s, verify_s, censored=result.tie)

        policy = SpeculationPolicy(choose, adaptive=adaptive if c.k == "auto" else None)
        target = TimedTarget(self.target, adaptive, self._prior.target_call_s)
        drafter = self._make_drafter(self._recent_sources(tenant))
        decoder = SpeculativeDecoder(drafter, target, policy=policy, eos_ids=self.target.eos_ids, on_round=on_round)
        return RequestSpeculation(self, decoder, adaptive, k_chosen, tenant)

    def _max_k(self) -> int:
        # A llama.cpp target verifies k+1 prefixes on k+1 slots: never ask for more than it has.
        cap = getattr(self.target, "max_draft", None)
        return max(1, min(self.config.max_k, cap)) if isinstance(cap, int) else self.config.max_k

    def _recent_sources(self, tenant: str) -> list[Sequence[int]]:
        if self.config.draft != NGRAM:
            return []
        recent = self._recent.get(tenant)
        return recent.sources() if recent is not None else []

    def finish(self, request: RequestSpeculation, output: Sequence[int], ok: bool) -> None:
        """Book a finished request; learn its costs and acceptance; keep its output for n-gram drafts."""
        d = request.decoder
        request.output_tokens = len(output)
        t = self.totals
        t.requests += 1
        t.rounds += d.rounds
        t.drafted += d.drafted
        t.accepted += d.accepted
        t.target_calls += d.target_calls
        t.output_tokens += len(output)
        for k, n in request.k_chosen.items():
            t.k_chosen[k] = t.k_chosen.get(k, 0) + n
        if d.fallback_reason is not None:
            t.fallbacks[d.fallback_reason] = t.fallbacks.get(d.fallback_reason, 0) + 1
        adaptive = request.adaptive
        t.estimated_speedup = round(adaptive.best()[1], 3) if adaptive.k_cap > 0 else None
        if ok and d.rounds > 0:
            self._prior = self._learned_prior(adaptive)
        if ok and self.config.draft == NGRAM and output:
            recent = self._recent.pop(request.tenant, None) or RecentResponses()
            recent.add(output)
            self._recent[request.tenant] = recent
            while len(self._recent) > _MAX_TENANTS:
                self._recent.popitem(last=False)
        if self.on_request is not None:
            self.on_request(self, request, None)

    def plain(self, reason: str) -> None:
        """Book a request of the route served plainly, and why."""
        self.totals.plain_requests += 1
        self.totals.fallbacks[reason] = self.totals.fallbacks.get(reason, 0) + 1
        if self.on_request is not None:
            self.on_request(self, None, reason)

    # -- costs -----------------------------------------------------------------------------------

    def _initial_prior(self) -> SpeculationPrior:
        """Before any measurement: a GPU-like target (25 ms a token, 4 ms a call), a free n-gram
        drafter or a model draft at a fifth of the target's token time. Requests replace it."""
        model_draft = self.config.draft != NGRAM
        return SpeculationPrior(target_token_s=0.025, target_call_s=0.004, verify_token_s=0.0005,
                                draft_token_s=0.005 if model_draft else 0.0,
                                draft_call_s=0.003 if model_draft else 0.0, alpha=0.6)

    def _learned_prior(self, adaptive: AdaptiveK) -> SpeculationPrior:
        t_token = adaptive.target_token_s
        slope = max(adaptive.verify_fit.slope, 0.0)
        return SpeculationPrior(
            target_token_s=t_token,
            target_call_s=max(adaptive.verify_fit.intercept - t_token - slope, 0.0),
            verify_token_s=slope,
            draft_token_s=max(adaptive.draft_fit.slope, 0.0),
            draft_call_s=max(adaptive.draft_fit.intercept, 0.0),
            alpha=min(max(adaptive.alpha, 0.05), 0.95),
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready: the pair, its probe verdict and what it did."""
        t = self.totals
        prior = self._prior
        return {
            "route": self.route, "pair": self.name, "target": self.config.target, "draft": self.config.draft,
            "state": self.state, "reason": self.reason, "probe": self.probe_details,
            "k": self.config.k, "max_k": self._max_k() if self.target is not None else self.config.max_k,
            "requests": t.requests, "plain_requests": t.plain_requests, "rounds": t.rounds,
            "drafted": t.drafted, "accepted": t.accepted, "target_calls": t.target_calls,
            "output_tokens": t.output_tokens,
            "acceptance_rate": round(t.accepted / t.drafted, 4) if t.drafted else None,
            "tokens_per_target_call": round(t.output_tokens / t.target_calls, 3) if t.target_calls else None,
            "k_chosen": {str(k): n for k, n in sorted(t.k_chosen.items())},
            "fallbacks": dict(sorted(t.fallbacks.items())),
            "estimated_speedup": t.estimated_speedup,
            "learned": {"alpha": round(prior.alpha, 4), "target_token_ms": round(prior.target_token_s * 1000, 3),
                        "target_call_ms": round(prior.target_call_s * 1000, 3),
                        "verify_token_ms": round(prior.verify_token_s * 1000, 3),
                        "draft_token_ms": round(prior.draft_token_s * 1000, 3),
                        "draft_call_ms": round(prior.draft_call_s * 1000, 3)},
        }

