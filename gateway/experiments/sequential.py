"""Comparing a candidate arm with control in a way that stays valid however often it is looked at.

A fixed-n confidence interval promises 95% coverage at one pre-planned look. A dashboard that checks
it every minute and stops at the first "significant" result sees many looks, and the chance that
*some* look excludes zero grows far past 5% even when the arms are identical. `compare` instead
returns a point of a *confidence sequence*: a sequence of intervals that contains the true difference
at every look simultaneously with probability >= 1 - alpha, so stopping whenever it first excludes 0
keeps the false-positive rate at alpha.

Method: the asymptotic confidence sequence with the normal-mixture boundary of Waudby-Smith, Arbour,
Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and asymptotic confidence sequences"
(Annals of Statistics, 2024; arXiv 2103.06476, Theorem 2.2). For the mean of t i.i.d. observations
with sample mean m and sample standard deviation s it is

    m  +/-  s * sqrt( 2 (t rho^2 + 1) / (t^2 rho^2) * log( sqrt(t rho^2 + 1) / alpha ) )

(two-sided, at level alpha, no alpha/2). Applied to a difference of two arms, the observation is a
(candidate, control) pair: t is the number of pairs, m = mean_candidate - mean_control and
s^2 = var_candidate + var_control (the arms are independent). With unequal counts we use the same
boundary on the standard error sqrt(V), V = var_cand / n_cand + var_ctrl / n_ctrl, with t the
effective number of pairs 2 n_cand n_ctrl / (n_cand + n_ctrl) (equal to n when both arms have n);
with equal counts this is the theorem exactly, otherwise the natural extension.

The same boundary is the mixture sequential probability ratio test (mSPRT) of Johari, Koomen, Pekelis
and Walsh, "Always Valid Inference: Continuous Monitoring of A/B Tests" (Operations Research, 2022)
with a normal mixing distribution of variance tau^2 = rho^2 s^2 on the difference: the interval is
the set of differences theta whose mixture likelihood ratio
Lambda(theta) = (1 + u)^(-1/2) * exp(u / (1 + u) * z^2 / 2),  u = t rho^2,  z = (m - theta) / sqrt(V),
stays below 1 / alpha, so `p_value` = min(1, 1 / Lambda(0)) is that test's always-valid p-value at
this look and `conclusive` (interval excludes 0) is the same event as p_value <= alpha. A caller
tracking a running p-value keeps the smallest one seen.

rho only shapes *where* the interval is tightest (`target_n` samples per arm); every rho is valid.
The validity is asymptotic (it rests on a strong Gaussian approximation of the running mean), so
the first looks of a very skewed metric can be slightly optimistic; the boundary is very wide there.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal, NamedTuple

from gateway.experiments.sketch import LatencySketch

_STANDARD_NORMAL = NormalDist()

Winner = Literal["control", "candidate"]


class ArmSummary(NamedTuple):
    """What the statistics need from one arm: sample count, mean, sample variance (n - 1)."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of_sketch(cls, sketch: LatencySketch) -> ArmSummary:
        """The summary of an arm's sketch (its mean and variance are exact, not bucketed)."""
        return cls(sketch.count, sketch.mean, sketch.variance)


class Comparison(NamedTuple):
    """Candidate against control at one look; `interval` and `conclusive` are valid at every look."""

    difference: float  # candidate - control
    relative: float  # difference / control mean
    interval: tuple[float, float]  # confidence-sequence interval for the difference
    relative_interval: tuple[float, float]  # `interval` / control mean (control mean taken as known)
    conclusive: bool  # the interval excludes 0
    winner: Winner | None
    p_value: float  # always-valid (mSPRT) p-value at this look
    alpha: float
    summary: str


def optimal_rho_squared(target_n: float, alpha: float) -> float:
    """The rho^2 that makes the boundary narrowest at `target_n` observations.

    Minimising the boundary over u = t rho^2 gives u = 2 log(1/alpha) + log(1 + u); the paper's
    closed form is the first iterate of that fixed point, which we iterate to convergence (it is a
    contraction since d/du log(1 + u) < 1).
    """
    two_log = -2.0 * math.log(alpha)
    u = two_log
    for _ in range(50):
        nxt = two_log + math.log1p(u)
        if abs(nxt - u) < 1e-12:
            break
        u = nxt
    return u / target_n


def boundary_multiplier(u: float, alpha: float) -> float:
    """The width of the normal-mixture boundary in standard errors, for u = t rho^2 > 0."""
    return math.sqrt(2.0 * (u + 1.0) / u * math.log(math.sqrt(u + 1.0) / alpha))


def compare(
    control: ArmSummary,
    candidate: ArmSummary,
    *,
    alpha: float = 0.05,
    lower_is_better: bool = True,
    target_n: int = 1000,
    words: tuple[str, str] = ("higher", "lower"),
) -> Comparison:
    """Candidate against control with an asymptotic confidence sequence (see the module docstring).

    `lower_is_better` decides who wins a conclusive comparison (True for latencies and cost).
    `target_n` is the per-arm sample size where the interval should be tightest. `words` name a
    positive and a negative difference in the summary, e.g. ("slower", "faster") for latency.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    difference = candidate.mean - control.mean
    relative = difference / control.mean if control.mean else math.nan
    if control.n < 2 or candidate.n < 2:
        interval = (-math.inf, math.inf)
        p_value = 1.0
    else:
        variance = candidate.variance / candidate.n + control.variance / control.n
        pairs = 2.0 * candidate.n * control.n / (candidate.n + control.n)
        u = optimal_rho_squared(target_n, alpha) * pairs
        radius = math.sqrt(variance) * boundary_multiplier(u, alpha)
        interval = (difference - radius, difference + radius)
        p_value = _mixture_p_value(difference, variance, u)
    conclusive = interval[0] > 0.0 or interval[1] < 0.0
    winner: Winner | None = None
    if conclusive:
        candidate_better = (difference < 0.0) == lower_is_better
        winner = "candidate" if candidate_better else "control"
    scale = control.mean if control.mean else math.nan
    relative_interval = (interval[0] / scale, interval[1] / scale)
    summary = _describe(relative, relative_interval, conclusive, alpha, words)
    return Comparison(difference, relative, interval, relative_interval, conclusive, winner, p_value, alpha, summary)


def _mixture_p_value(difference: float, variance: float, u: float) -> float:
    """1 / Lambda(0) of the normal-mixture SPRT, capped at 1 (computed in logs: Lambda overflows)."""
    if variance <= 0.0:
        return 1.0 if difference == 0.0 else 0.0
    z_squared = difference * difference / variance
    log_p = 0.5 * math.log1p(u) - u / (1.0 + u) * z_squared / 2.0
    return math.exp(min(log_p, 0.0))


def _describe(
    relative: float,
    relative_interval: tuple[float, float],
    conclusive: bool,
    alpha: float,
    words: tuple[str, str],
) -> str:
    word = words[0] if relative >= 0.0 else words[1]
    low, high = relative_interval
    verdict = "conclusive" if conclusive else "not conclusive"
    return f"candidate is {abs(relative):.1%} {word} (interval {low:+.1%} .. {high:+.1%}), {verdict} at alpha {alpha:g}"


# -- fixed-n intervals, for the per-arm report ---------------------------------------------------


def fixed_difference_interval(
    control: ArmSummary, candidate: ArmSummary, confidence: float = 0.95
) -> tuple[float, float]:
    """The classical (Welch, normal approximation) interval for candidate - control.

    Valid at ONE pre-planned look only: checking it repeatedly inflates false positives, which is why
    `compare` exists. Kept for reports and for the test that demonstrates that inflation.
    """
    z = _STANDARD_NORMAL.inv_cdf(0.5 + confidence / 2.0)
    difference = candidate.mean - control.mean
    radius = z * math.sqrt(candidate.variance / candidate.n + control.variance / control.n)
    return (difference - radius, difference + radius)


def mean_interval(arm: ArmSummary, confidence: float = 0.95) -> tuple[float, float]:
    """Normal-approximation interval for one arm's mean at a single look."""
    if arm.n < 2:
        return (-math.inf, math.inf)
    z = _STANDARD_NORMAL.inv_cdf(0.5 + confidence / 2.0)
    radius = z * math.sqrt(arm.variance / arm.n)
    return (arm.mean - radius, arm.mean + radius)


def quantile_rank_interval(n: int, q: float, confidence: float = 0.95) -> tuple[int, int]:
    """0-based ranks (low, high) of the sorted sample that bracket the true q-quantile.

    Distribution-free order-statistic interval: the number of observations below the true quantile
    is Binomial(n, q), so [X(l), X(u)] covers it when l <= B < u; the binomial is approximated by a
    normal with a continuity-free +/- z sqrt(n q (1 - q)) band and clamped to the sample.
    """
    if n < 1:
        raise ValueError("need at least one observation")
    z = _STANDARD_NORMAL.inv_cdf(0.5 + confidence / 2.0)
    spread = z * math.sqrt(n * q * (1.0 - q))
    low = math.floor(n * q - spread)  # 1-based rank l
    high = math.ceil(n * q + spread) + 1  # 1-based rank u
    return (max(low, 1) - 1, min(high, n) - 1)


def quantile_interval(sketch: LatencySketch, q: float, confidence: float = 0.95) -> tuple[float, float]:
    """Interval for an arm's true q-quantile, read from its sketch at the order-statistic ranks.

    Each end also carries the sketch's `alpha` relative error (the bucket midpoint stands in for the
    order statistic), so treat the interval as widened by that factor. NaNs when the sketch is empty.
    """
    if sketch.count == 0:
        return (math.nan, math.nan)
    low, high = quantile_rank_interval(sketch.count, q, confidence)
    return (sketch.value_at_rank(low), sketch.value_at_rank(high))
