"""Sample-ratio mismatch (SRM): are the arms' request counts consistent with the designed split?

A split that drifts from its design (a sticky key that is missing for one client, a replica
with a stale config, a backend that drops requests before they are counted) biases every
comparison between the arms, so it is checked before any latency or quality result is read.
The test is Pearson's chi-square goodness of fit. Neither numpy nor scipy is a dependency of
the gateway, so the chi-square survival function is computed here from the regularized upper
incomplete gamma function (series for small x, Lentz's continued fraction for large x).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

_EPS = 1e-15  # relative accuracy the series and the continued fraction stop at
_TINY = 1e-300  # keeps Lentz's method away from dividing by zero
_MAX_ITER = 10_000

# The check is meant to run continuously (every scrape, every report) on a growing sample, so
# it is looked at many times; a conventional 0.05 would then alarm on almost every healthy
# experiment. 0.0005 is the threshold commonly used for continuously monitored SRM alarms.
DEFAULT_ALPHA = 0.0005
# Below this many requests in all, a lopsided split is ordinary noise and says nothing.
DEFAULT_MIN_TOTAL = 100


def _lower_gamma_series(a: float, x: float) -> float:
    """P(a, x), the regularized lower incomplete gamma, by its power series (good for x < a + 1)."""
    term = total = 1.0 / a
    ap = a
    for _ in range(_MAX_ITER):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _upper_gamma_fraction(a: float, x: float) -> float:
    """Q(a, x), the regularized upper incomplete gamma, by its continued fraction (x >= a + 1).

    Computing Q directly, rather than 1 - P, keeps p-values such as 1e-30 accurate.
    """
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h * math.exp(-x + a * math.log(x) - math.lgamma(a))


def upper_regularized_gamma(a: float, x: float) -> float:
    """Q(a, x) = Γ(a, x) / Γ(a) for a > 0, x >= 0."""
    if a <= 0:
        raise ValueError(f"a must be positive, got {a}")
    if x < 0:
        raise ValueError(f"x must be non-negative, got {x}")
    if x == 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    if x < a + 1.0:
        return max(0.0, 1.0 - _lower_gamma_series(a, x))
    return _upper_gamma_fraction(a, x)


def chi_square_sf(x: float, dof: int) -> float:
    """P(X >= x) for X chi-square distributed with `dof` degrees of freedom (scipy's chi2.sf)."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {dof}")
    if x <= 0:
        return 1.0
    return upper_regularized_gamma(dof / 2.0, x / 2.0)


def goodness_of_fit(counts: Sequence[int], expected_shares: Sequence[float]) -> tuple[float, float]:
    """Pearson's chi-square statistic and p-value of `counts` against `expected_shares`.

    Shares are normalized, so weights (80, 10, 10) work as well as (0.8, 0.1, 0.1). A category
    with no expected share is left out if it has no count, and makes the fit impossible
    (statistic inf, p 0) if it has one. With fewer than two possible categories nothing can
    be tested and the answer is (0, 1).
    """
    if len(counts) != len(expected_shares):
        raise ValueError(f"{len(counts)} counts but {len(expected_shares)} expected shares")
    if any(c < 0 for c in counts) or any(not (s >= 0 and math.isfinite(s)) for s in expected_shares):
        raise ValueError("counts and expected shares must be non-negative and finite")
    share_total = math.fsum(expected_shares)
    if share_total <= 0:
        raise ValueError("expected shares must not all be zero")
    n = sum(counts)
    if n == 0:
        return 0.0, 1.0
    statistic = 0.0
    categories = 0
    for count, share in zip(counts, expected_shares, strict=True):
        if share == 0:
            if count:
                return math.inf, 0.0
            continue
        categories += 1
        expected = n * share / share_total
        statistic += (count - expected) ** 2 / expected
    if categories < 2:
        return 0.0, 1.0
    return statistic, chi_square_sf(statistic, categories - 1)


class SrmVerdict(NamedTuple):
    """The outcome of one check; `message` shows every arm's count and share against its design."""

    mismatch: bool
    p_value: float
    message: str


class SrmCheck:
    """Alarms when the arms' counts are implausible under the designed shares.

    `alpha` is conservative by default because the check is repeated continuously on the same
    growing sample (see `DEFAULT_ALPHA`); it never alarms below `min_total` requests in all.
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA, min_total: int = DEFAULT_MIN_TOTAL) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if min_total < 0:
            raise ValueError(f"min_total must be non-negative, got {min_total}")
        self.alpha = alpha
        self.min_total = min_total

    def check(self, counts: Mapping[str, int], expected_shares: Mapping[str, float]) -> SrmVerdict:
        """Compare requests served per arm with the shares each arm should have had.

        An arm in only one of the two mappings counts as 0 requests / 0 share there, so a
        request counted for an arm outside the design is itself a mismatch.
        """
        arms = list(expected_shares) + [arm for arm in counts if arm not in expected_shares]
        seen = [counts.get(arm, 0) for arm in arms]
        shares = [expected_shares.get(arm, 0.0) for arm in arms]
        _, p_value = goodness_of_fit(seen, shares)
        total = sum(seen)
        share_total = math.fsum(shares)
        detail = "; ".join(
            f"{arm} {count:,} ({_percent(count, total)}) vs expected {_percent(share, share_total)}"
            for arm, count, share in zip(arms, seen, shares, strict=True)
        )
        if total < self.min_total:
            return SrmVerdict(False, p_value, f"too few requests to judge ({total:,} < {self.min_total:,}): {detail}")
        mismatch = p_value < self.alpha
        verdict = "sample ratio mismatch" if mismatch else "sample ratio ok"
        return SrmVerdict(mismatch, p_value, f"{verdict}: {detail}; p={p_value:.2g} (alpha {self.alpha:g})")


def _percent(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"
