"""`InProcessArmStats` and `ArmTotals`: counts, sums, quantiles and feedback per arm."""

from __future__ import annotations

import math
import random

import pytest

from gateway.experiments.arm_stats import ArmObservation, ArmTotals, InProcessArmStats
from gateway.experiments.sequential import ArmSummary


def obs(arm: str, e2e: float, *, ok: bool = True, exp: str = "x") -> ArmObservation:
    return ArmObservation(exp, arm, ok, ttft_s=e2e / 4, tpot_s=e2e / 100, e2e_s=e2e,
                          input_tokens=10, output_tokens=100, cost_usd=0.001)


async def test_totals_count_sum_and_quantiles() -> None:
    store = InProcessArmStats()
    rng = random.Random(7)
    latencies = [rng.uniform(0.1, 2.0) for _ in range(500)]
    for value in latencies:
        store.record(obs("a", value))
    store.record(obs("a", 30.0, ok=False))
    store.record(obs("b", 1.0))
    totals = await store.totals("x")
    assert set(totals) == {"a", "b"}
    a = totals["a"]
    assert (a.requests, a.errors, a.input_tokens, a.output_tokens) == (501, 1, 5010, 50100)
    assert a.cost_usd == pytest.approx(0.501)
    e2e = a.sketches["e2e"]
    # The failed request is counted but kept out of the latencies.
    assert e2e.count == 500 and e2e.max < 30.0
    assert e2e.sum == pytest.approx(sum(latencies))
    ordered = sorted(latencies)
    for q in (0.5, 0.9, 0.99):
        assert e2e.quantile(q) == pytest.approx(ordered[math.floor(q * 499)], rel=0.011)
    assert a.sketches["ttft"].quantile(0.5) == pytest.approx(ordered[249] / 4, rel=0.011)
    assert ArmSummary.of_sketch(e2e).n == 500
    assert await store.totals("other") == {}


async def test_missing_or_bad_latencies_are_skipped_not_raised() -> None:
    store = InProcessArmStats()
    store.record(ArmObservation("x", "a", True, None, None, 1.0, 1, 1, 0.0))
    store.record(ArmObservation("x", "a", True, math.nan, -1.0, math.inf, 1, 1, math.nan))
    a = (await store.totals("x"))["a"]
    assert a.requests == 2 and a.cost_usd == 0.0
    assert (a.sketches["ttft"].count, a.sketches["tpot"].count, a.sketches["e2e"].count) == (0, 0, 1)


async def test_feedback_joins_its_arm() -> None:
    store = InProcessArmStats()
    store.record(obs("a", 1.0))
    store.record_feedback("x", "a", 1.0, "good")
    store.record_feedback("x", "a", -1.0, None)
    store.record_feedback("x", "b", None, "bad")
    store.record_feedback("x", "b", math.nan, "bad")
    totals = await store.totals("x")
    a, b = totals["a"], totals["b"]
    assert (a.feedback_count, a.score_count, a.score_sum, a.score_sumsq) == (2, 2, 0.0, 2.0)
    assert a.labels == {"good": 1} and a.score_mean == 0.0
    assert (b.feedback_count, b.score_count, b.labels, b.requests) == (2, 0, {"bad": 2}, 0)
    assert math.isnan(b.score_mean)


async def test_totals_are_copies_and_reset_forgets() -> None:
    store = InProcessArmStats()
    store.record(obs("a", 1.0))
    (await store.totals("x"))["a"].requests = 99
    assert (await store.totals("x"))["a"].requests == 1
    await store.reset("x")
    assert await store.totals("x") == {}


def test_merge_adds_everything() -> None:
    left, right, both = ArmTotals(), ArmTotals(), ArmTotals()
    for i, value in enumerate((0.2, 0.4, 0.8, 1.6)):
        (left if i % 2 else right).add(obs("a", value))
        both.add(obs("a", value))
    left.add_feedback(2.0, "ok")
    both.add_feedback(2.0, "ok")
    left.merge(right)
    assert left.requests == both.requests == 4
    assert left.sketches["e2e"].bucket_counts() == both.sketches["e2e"].bucket_counts()
    assert left.labels == both.labels and left.score_sum == both.score_sum
