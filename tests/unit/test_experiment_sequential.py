"""The sequential comparison: finds a real slowdown, and peeking at an A/A test does not invent one."""

from __future__ import annotations

import math
import random

import pytest

from gateway.experiments.sequential import (
    ArmSummary,
    boundary_multiplier,
    compare,
    fixed_difference_interval,
    mean_interval,
    optimal_rho_squared,
    quantile_interval,
    quantile_rank_interval,
)
from gateway.experiments.sketch import LatencySketch

SIGMA = 0.5  # log-scale spread of the simulated latencies: a skewed, realistic-looking tail


class RunningArm:
    """Running sums for one simulated arm (what the sketch keeps, without the buckets)."""

    def __init__(self) -> None:
        self.n, self.total, self.total_sq = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.total += x
        self.total_sq += x * x

    def summary(self) -> ArmSummary:
        mean = self.total / self.n
        return ArmSummary(self.n, mean, max(self.total_sq - self.total * mean, 0.0) / (self.n - 1))


def excludes_zero(interval: tuple[float, float]) -> bool:
    return interval[0] > 0.0 or interval[1] < 0.0


def test_a_candidate_20_percent_slower_is_found_with_the_right_sign() -> None:
    found = 0
    for seed in range(50):
        rng = random.Random(seed)
        control, candidate = LatencySketch(), LatencySketch()
        for _ in range(2_000):
            control.add(rng.lognormvariate(0.0, SIGMA))
            candidate.add(1.2 * rng.lognormvariate(0.0, SIGMA))
        result = compare(ArmSummary.of_sketch(control), ArmSummary.of_sketch(candidate), words=("slower", "faster"))
        if result.conclusive and result.winner == "control" and 0.12 < result.relative < 0.28:
            assert result.difference > 0 and result.interval[0] > 0
            assert result.p_value <= result.alpha
            found += 1
    assert found >= 48


def test_the_summary_reads_like_a_verdict() -> None:
    control = ArmSummary(2_000, 1.0, 0.25)
    candidate = ArmSummary(2_000, 1.2, 0.36)
    result = compare(control, candidate, words=("slower", "faster"))
    low, high = result.relative_interval
    assert result.summary == (
        f"candidate is 20.0% slower (interval {low:+.1%} .. {high:+.1%}), conclusive at alpha 0.05"
    )
    faster = compare(candidate, control, words=("slower", "faster"))
    assert faster.winner == "candidate" and "faster" in faster.summary
    # For a metric where higher is better (throughput), the same numbers crown the other arm.
    assert compare(control, candidate, lower_is_better=False).winner == "candidate"


def test_a_a_with_continuous_monitoring_keeps_the_error_rate_but_naive_peeking_does_not() -> None:
    runs, step, horizon, alpha = 200, 50, 2_000, 0.05
    sequential_hits = naive_hits = 0
    for seed in range(runs):
        rng = random.Random(1_000 + seed)
        control, candidate = RunningArm(), RunningArm()
        sequential_seen = naive_seen = False
        while control.n < horizon:
            for _ in range(step):
                control.add(rng.lognormvariate(0.0, SIGMA))
                candidate.add(rng.lognormvariate(0.0, SIGMA))
            a, b = control.summary(), candidate.summary()
            sequential_seen = sequential_seen or compare(a, b, alpha=alpha).conclusive
            naive_seen = naive_seen or excludes_zero(fixed_difference_interval(a, b, 1 - alpha))
        sequential_hits += sequential_seen
        naive_hits += naive_seen
    # alpha plus about two binomial standard errors for 200 runs.
    assert sequential_hits / runs <= 0.08
    # Checking a fixed-n 95% interval at each of the 40 looks is wrong far more often than 5%.
    assert naive_hits / runs > 0.15


def test_the_interval_shrinks_as_samples_grow_and_centres_on_zero_for_equal_arms() -> None:
    widths = []
    for n in (100, 1_000, 10_000, 100_000):
        arm = ArmSummary(n, 1.0, 0.3)
        result = compare(arm, arm)
        low, high = result.interval
        assert low == pytest.approx(-high) and low < 0 < high
        assert not result.conclusive and result.winner is None and result.p_value == 1.0
        widths.append(high - low)
    assert widths == sorted(widths, reverse=True)
    # Wider than the fixed-n interval at the same n: that is the price of looking at will.
    fixed = fixed_difference_interval(ArmSummary(1_000, 1.0, 0.3), ArmSummary(1_000, 1.0, 0.3))
    assert widths[1] > fixed[1] - fixed[0]


def test_too_few_samples_are_never_conclusive() -> None:
    result = compare(ArmSummary(1, 1.0, math.nan), ArmSummary(500, 5.0, 0.1))
    assert result.interval == (-math.inf, math.inf) and not result.conclusive and result.p_value == 1.0


def test_the_boundary_is_narrowest_at_the_target_sample_size() -> None:
    alpha = 0.05
    rho_squared = optimal_rho_squared(1_000, alpha)

    def width(n: int) -> float:  # in units of the per-pair standard deviation
        return boundary_multiplier(rho_squared * n, alpha) / math.sqrt(n)

    def width_with(rho2: float) -> float:
        return boundary_multiplier(rho2 * 1_000, alpha) / math.sqrt(1_000)

    assert width_with(rho_squared) < width_with(rho_squared * 1.2)
    assert width_with(rho_squared) < width_with(rho_squared / 1.2)
    assert width(500) > width(1_000) > width(2_000)


def test_p_value_and_interval_agree_on_conclusiveness() -> None:
    control = ArmSummary(400, 1.0, 0.25)
    for shift in (0.0, 0.02, 0.05, 0.08, 0.1, 0.15, 0.3):
        result = compare(control, ArmSummary(400, 1.0 + shift, 0.25))
        assert result.conclusive == (result.p_value <= result.alpha), shift


def test_fixed_n_mean_and_quantile_intervals_cover_the_truth() -> None:
    true_mean = math.exp(SIGMA**2 / 2)  # of lognormal(0, SIGMA)
    true_median, true_p90 = 1.0, math.exp(SIGMA * 1.2815515655446004)
    covered = {"mean": 0, "p50": 0, "p90": 0}
    runs = 200
    for seed in range(runs):
        rng = random.Random(5_000 + seed)
        sketch = LatencySketch()
        for _ in range(300):
            sketch.add(rng.lognormvariate(0.0, SIGMA))
        low, high = mean_interval(ArmSummary.of_sketch(sketch))
        covered["mean"] += low <= true_mean <= high
        for name, q, truth in (("p50", 0.5, true_median), ("p90", 0.9, true_p90)):
            low, high = quantile_interval(sketch, q)
            # The sketch's alpha widens each end (see quantile_interval).
            covered[name] += low * (1 - sketch.alpha) <= truth <= high * (1 + sketch.alpha)
    for name, hits in covered.items():
        assert hits / runs >= 0.90, name
    assert quantile_rank_interval(1, 0.5) == (0, 0)
    low_rank, high_rank = quantile_rank_interval(1_000, 0.5)
    assert low_rank < 499 < high_rank
