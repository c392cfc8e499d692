"""Choosing k, the number of drafts per round, from measurements (reference §5.2 to §5.4).

The cost model, in seconds:

    E[N](alpha, k) = (1 - alpha^(k+1)) / (1 - alpha)   tokens committed per round
    T_round(k)     = (R_d + k·t_d) + T_verify(k)          draft call + verify call
    T_verify(k)    = a + b·k      (a ≈ R_t + t_T + c_p, b ≈ c_p, fitted online)
    S(k)           = E[N]·t_T / T_round(k)                speedup vs plain target streaming

Both costs are fitted against the number of tokens actually drafted, so the per-token parts are only
learned when that number varies (short drafts, probes, load caps); until then they stay at the prior
and a slower target shows up in the intercepts.

Nothing here reads a clock: the caller times its draft and verify calls and passes the seconds in,
so every decision is reproducible in tests.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from gateway.speculative.interfaces import RoundResult

# A round can never cost nothing; the floor keeps a fitted model with a zero intercept from dividing by 0.
_MIN_ROUND_S = 1e-9


def expected_tokens(alpha: float, k: int) -> float:
    """E[N]: tokens committed per round with k drafts at per-token acceptance `alpha` (k+1 when alpha is 1)."""
    if alpha >= 1.0:
        return float(k + 1)
    if alpha <= 0.0:
        return 1.0
    # expm1/log instead of 1 - alpha**(k+1): no cancellation when alpha is a hair below 1.
    return -math.expm1((k + 1) * math.log(alpha)) / (1.0 - alpha)


@dataclass(frozen=True, slots=True)
class SpeculationPrior:
    """What is believed before any measurement, per (drafter, target, task); all times in seconds.

    `target_token_s` is t_T (one plain decode step), `target_call_s` R_t (per-call overhead),
    `verify_token_s` c_p (marginal cost per extra verified token), `draft_token_s` t_d and
    `draft_call_s` R_d (both 0 for the in-process n-gram drafter). `alpha` is the prior acceptance
    and `alpha_weight` how many drafted positions of evidence it is worth.
    """

    target_token_s: float
    target_call_s: float
    verify_token_s: float
    draft_token_s: float = 0.0
    draft_call_s: float = 0.0
    alpha: float = 0.6
    alpha_weight: float = 4.0


@dataclass(frozen=True, slots=True)
class AdaptiveKConfig:
    """Knobs of the k chooser.

    `min_speedup` and `patience`: fall back to plain steps once the best predicted speedup stays below
    `min_speedup` for `patience` consecutive rounds. `reprobe_tokens`: while plain, try one round of
    `probe_k` drafts after that many plain tokens. The decays weight old evidence: `alpha_decay` per
    round, `cost_decay` per timing observation (verify cost rises with target load, so it must forget).
    `slope_prior_weight` is how strongly a fitted per-token cost is pulled to the prior's (k² units).
    """

    max_k: int = 8
    min_speedup: float = 1.05
    patience: int = 3
    reprobe_tokens: int = 32
    probe_k: int = 2
    alpha_decay: float = 0.9
    cost_decay: float = 0.95
    target_token_prior_weight: float = 4.0
    slope_prior_weight: float = 1.0


class LinearCostFit:
    """`seconds ≈ intercept + slope·k`, least squares with exponential forgetting.

    The slope is ridge-regularised toward the prior slope, so rounds that all used the same k move the
    intercept (target load) rather than inventing a per-token cost. Before any observation the prior
    line is returned. Neither coefficient is allowed below 0: a negative cost is always noise.
    """

    def __init__(self, intercept: float, slope: float, *, decay: float, prior_weight: float) -> None:
        self._prior = (intercept, slope)
        self._decay = decay
        self._rho = prior_weight
        self._w = self._sk = self._skk = self._sy = self._sky = 0.0
        self._fit = (intercept, slope)

    @property
    def intercept(self) -> float:
        return self._fit[0]

    @property
    def slope(self) -> float:
        return self._fit[1]

    def predict(self, k: float) -> float:
        return self._fit[0] + self._fit[1] * k

    def observe(self, k: float, seconds: float) -> None:
        d = self._decay
        self._w = d * self._w + 1.0
        self._sk = d * self._sk + k
        self._skk = d * self._skk + k * k
        self._sy = d * self._sy + seconds
        self._sky = d * self._sky + k * seconds
        self._fit = self._solve()

    def _solve(self) -> tuple[float, float]:
        b0 = self._prior[1]
        k_mean, y_mean = self._sk / self._w, self._sy / self._w
        sxx = max(self._skk - self._w * k_mean * k_mean, 0.0)
        sxy = self._sky - self._w * k_mean * y_mean
        slope = max((sxy + self._rho * b0) / (sxx + self._rho), 0.0)
        intercept = y_mean - slope * k_mean
        if intercept < 0.0:
            # Refit through the origin: the best line with a zero intercept, not the old slope cut off.
            slope = max((self._sky + self._rho * b0) / (self._skk + self._rho), 0.0)
            intercept = 0.0
        return intercept, slope


class AdaptiveK:
    """Chooses k for each round of one request from its measured acceptance and costs (reference §5.3).

    Call `choose()` once per round: a k ≥ 1 means draft that many and verify, 0 means take a plain
    target step (ideally `plain_tokens_until_probe` tokens). Report what happened with `observe_round`
    or `observe_plain`. `load_cap` lowers the largest k while the target is loaded.
    """

    def __init__(self, prior: SpeculationPrior, config: AdaptiveKConfig | None = None) -> None:
        self.config = config or AdaptiveKConfig()
        c = self.config
        # alpha_hat is Σaccepted / Σ(accepted + rejections) with forgetting: the truncated-geometric MLE,
        # seeded with the prior as pseudo-counts so the first rounds do not swing it to 0 or 1.
        self._accepted = prior.alpha * prior.alpha_weight
        self._trials = prior.alpha_weight
        self._target_s = prior.target_token_s * c.target_token_prior_weight
        self._target_tokens = c.target_token_prior_weight
        self.verify_fit = LinearCostFit(
            prior.target_call_s + prior.target_token_s + prior.verify_token_s,
            prior.verify_token_s,
            decay=c.cost_decay,
            prior_weight=c.slope_prior_weight,
        )
        self.draft_fit = LinearCostFit(
            prior.draft_call_s, prior.draft_token_s, decay=c.cost_decay, prior_weight=c.slope_prior_weight
        )
        self._cap = c.max_k
        self._low_rounds = 0
        self._plain_tokens = 0
        # A prior that already predicts no gain needs no hysteresis: there is no noisy evidence to smooth.
        self._plain = self.best()[1] < c.min_speedup

    @property
    def alpha(self) -> float:
        """alpha_hat, the estimated probability that the target accepts a drafted token."""
        return self._accepted / self._trials if self._trials > 0.0 else 1.0

    @property
    def target_token_s(self) -> float:
        """t̂_T, seconds per token of plain target decoding."""
        return self._target_s / self._target_tokens

    @property
    def k_cap(self) -> int:
        """The largest k `choose` may return now: `max_k`, lowered by `load_cap`."""
        return self._cap

    @property
    def plain(self) -> bool:
        """Whether speculation is off (plain target steps) until a re-probe or better estimates."""
        return self._plain

    @property
    def plain_tokens_until_probe(self) -> int:
        """While plain, how many more plain tokens before `choose` re-probes."""
        return max(self.config.reprobe_tokens - self._plain_tokens, 0)

    def load_cap(self, k_max: int) -> None:
        """Caps k at `k_max` (never above the configured `max_k`; 0 means plain steps only).

        The caller lowers it as the target's queue grows (vLLM `num_requests_waiting`, llama.cpp
        `requests_deferred`): a compute-bound target pays for every wasted verified token.
        """
        self._cap = max(0, min(k_max, self.config.max_k))

    def round_seconds(self, k: int) -> float:
        """T̂_round(k): predicted seconds for drafting k tokens and verifying them."""
        return max(self.draft_fit.predict(k) + self.verify_fit.predict(k), _MIN_ROUND_S)

    def predicted_speedup(self, k: int, alpha: float | None = None) -> float:
        """S(k) = E[N]·t̂_T / T̂_round(k) at alpha_hat (or the given `alpha`), vs plain target streaming."""
        a = self.alpha if alpha is None else alpha
        return expected_tokens(a, k) * self.target_token_s / self.round_seconds(k)

    def best(self, alpha: float | None = None) -> tuple[int, float]:
        """The k in 1..k_cap with the highest predicted speedup, and that speedup ((0, 0.0) if capped to 0)."""
        best_k, best_s = 0, 0.0
        for k in range(1, self._cap + 1):
            s = self.predicted_speedup(k, alpha)
            if s > best_s:
                best_k, best_s = k, s
        return best_k, best_s

    def choose(self) -> int:
        """k for the next round, or 0 for a plain target step. Call once per round: it advances the
        hysteresis (a fallback needs `patience` consecutive low predictions) and the re-probe schedule."""
        c = self.config
        if self._cap < 1:
            return 0
        k, speedup = self.best()
        if not self._plain:
            if speedup >= c.min_speedup:
                self._low_rounds = 0
                return k
            self._low_rounds += 1
            if self._low_rounds < c.patience:
                return k
            self._plain, self._plain_tokens = True, 0
            return 0
        if speedup >= c.min_speedup:
            # A probe (or slower plain steps raising t̂_T) made speculation look worth it again.
            self._plain, self._low_rounds = False, 0
            return k
        if self._plain_tokens >= c.reprobe_tokens:
            self._plain_tokens = 0
            # A probe can only teach alpha; skip it when even alpha = 1 would not pay for the round's cost.
            if self.best(alpha=1.0)[1] >= c.min_speedup:
                return min(c.probe_k, self._cap)
        return 0

    def observe_round(
        self, drafted: int, accepted: int, draft_s: float, verify_s: float, *, censored: bool = False
    ) -> None:
        """One speculative round: `drafted` proposals, `accepted` of them kept, and the seconds its draft
        and verify calls took. `censored`: the round ended on a tie or EOS rather than a rejection, so
        the position after the accepted ones says nothing about alpha (as `RoundResult.tie`)."""
        if not 0 <= accepted <= drafted:
            raise ValueError(f"accepted={accepted} must be within 0..drafted={drafted}")
        rejected = 1 if accepted < drafted and not censored else 0
        d = self.config.alpha_decay
        self._accepted = d * self._accepted + accepted
        self._trials = d * self._trials + accepted + rejected
        self.draft_fit.observe(drafted, draft_s)
        self.verify_fit.observe(drafted, verify_s)

    def observe_plain(self, tokens: int, seconds: float) -> None:
        """A plain target step: `tokens` generated in `seconds` (the per-call overhead excluded, if known)."""
        if tokens <= 0:
            return
        d = self.config.cost_decay
        self._target_s = d * self._target_s + seconds
        self._target_tokens = d * self._target_tokens + tokens
        if self._plain:
            self._plain_tokens += tokens


@dataclass(slots=True)
class SpecStats:
    """Counters for one speculative request (reference §5.5 and §5.6), for metrics and the
    `x-gateway-speculative` header. `committed` counts tokens from rounds and plain steps alike."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    committed: int = 0
    target_calls: int = 0
    plain_tokens: int = 0
    fallbacks: Counter[str] = field(default_factory=Counter)
    k_chosen: Counter[int] = field(default_factory=Counter)

    def record_choice(self, k: int) -> None:
        self.k_chosen[k] += 1

    def record_round(self, result: RoundResult) -> None:
        """A verified round: one target call committing `result.tokens`."""
        self.rounds += 1
        self.drafted += result.drafted
        self.accepted += result.accepted
        self.committed += len(result.tokens)
        self.target_calls += 1

    def record_plain(self, tokens: int, target_calls: int = 1) -> None:
        self.plain_tokens += tokens
        self.committed += tokens
        self.target_calls += target_calls

    def record_fallback(self, reason: str) -> None:
        self.fallbacks[reason] += 1

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted (draft efficiency); 0.0 before anything was drafted."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        """Committed tokens per target call (E[N] as measured); 0.0 before any call."""
        return self.committed / self.target_calls if self.target_calls else 0.0

    def as_dict(self) -> dict[str, int]:
        """The `x_spec` debug extension's fields."""
        return {
            "rounds": self.rounds,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "target_calls": self.target_calls,
        }

    def header_value(self) -> str:
        """E.g. "rounds=12; drafted=40; accepted=31; target_calls=13"."""
        return "; ".join(f"{name}={value}" for name, value in self.as_dict().items())
