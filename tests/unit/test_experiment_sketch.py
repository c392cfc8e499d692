"""LatencySketch: relative-error quantiles, exact merges and moments, Redis-shaped round trips."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import redis
from redis_server import RedisServer

from gateway.experiments.sketch import LatencySketch

QUANTILES = (0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)


def lognormal_sample(n: int, seed: int, sigma: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(0.0, sigma) for _ in range(n)]


def sketch_of(values: list[float], alpha: float = 0.01, max_buckets: int = 2048) -> LatencySketch:
    sketch = LatencySketch(alpha, max_buckets)
    for x in values:
        sketch.add(x)
    return sketch


def exact_quantile(ordered: list[float], q: float) -> float:
    """The order statistic the sketch promises to approximate (DDSketch's rank convention)."""
    return ordered[math.floor(q * (len(ordered) - 1))]


def test_quantiles_of_100k_lognormal_are_within_alpha() -> None:
    values = lognormal_sample(100_000, seed=1)
    ordered = sorted(values)
    for alpha in (0.01, 0.05):
        sketch = sketch_of(values, alpha=alpha)
        for q in QUANTILES:
            true = exact_quantile(ordered, q)
            assert abs(sketch.quantile(q) - true) <= alpha * true * (1 + 1e-9), (alpha, q)


def test_merge_of_two_halves_is_the_sketch_of_the_whole() -> None:
    values = lognormal_sample(20_000, seed=2) + [0.0] * 7
    random.Random(3).shuffle(values)
    whole = sketch_of(values)
    left, right = sketch_of(values[:12_345]), sketch_of(values[12_345:])
    left.merge(right)
    assert left.bucket_counts() == whole.bucket_counts()
    assert (left.count, left.zero_count, left.min, left.max) == (whole.count, whole.zero_count, whole.min, whole.max)
    assert left.sum == pytest.approx(whole.sum, rel=1e-12)
    assert left.sum_sq == pytest.approx(whole.sum_sq, rel=1e-12)
    for q in QUANTILES:
        assert left.quantile(q) == whole.quantile(q)


def test_mean_and_variance_match_the_statistics_module() -> None:
    values = lognormal_sample(50_000, seed=4, sigma=0.5)
    sketch = sketch_of(values)
    assert sketch.count == len(values)
    assert sketch.mean == pytest.approx(statistics.fmean(values), rel=1e-12)
    assert sketch.variance == pytest.approx(statistics.variance(values), rel=1e-9)
    assert (sketch.min, sketch.max) == (min(values), max(values))


def test_add_with_count_equals_repeated_adds() -> None:
    repeated, weighted = LatencySketch(), LatencySketch()
    for _ in range(5):
        repeated.add(0.25)
    weighted.add(0.25, count=5)
    assert repeated.bucket_counts() == weighted.bucket_counts()
    assert (repeated.count, repeated.sum, repeated.sum_sq) == (weighted.count, weighted.sum, weighted.sum_sq)


def test_empty_and_degenerate_sketches() -> None:
    sketch = LatencySketch()
    assert math.isnan(sketch.mean) and math.isnan(sketch.variance) and math.isnan(sketch.quantile(0.5))
    sketch.add(0.0)
    sketch.add(1e-12)
    assert sketch.zero_count == 2 and sketch.bucket_counts() == {}
    assert sketch.quantile(0.5) == 0.0
    with pytest.raises(ValueError):
        sketch.add(-1.0)
    with pytest.raises(ValueError):
        sketch.add(math.nan)
    with pytest.raises(ValueError):
        sketch.merge(LatencySketch(alpha=0.02))


def test_bytes_round_trip() -> None:
    sketch = sketch_of(lognormal_sample(1_000, seed=5), alpha=0.02, max_buckets=64)
    back = LatencySketch.from_bytes(sketch.to_bytes())
    assert back.bucket_counts() == sketch.bucket_counts()
    assert (back.alpha, back.max_buckets, back.count, back.sum, back.sum_sq, back.min, back.max) == (
        sketch.alpha,
        sketch.max_buckets,
        sketch.count,
        sketch.sum,
        sketch.sum_sq,
        sketch.min,
        sketch.max,
    )
    assert [back.quantile(q) for q in QUANTILES] == [sketch.quantile(q) for q in QUANTILES]


def hincrby_all(hashes: list[LatencySketch]) -> dict[bytes, bytes]:
    """What HGETALL returns after each replica applied its increments (HINCRBY / HINCRBYFLOAT)."""
    fields: dict[str, float] = {}
    for sketch in hashes:
        counts, sums = sketch.to_increments()
        for key, value in [*counts.items(), *sums.items()]:
            fields[key] = fields.get(key, 0) + value
    return {key.encode(): repr(value).encode() for key, value in fields.items()}


def test_from_fields_of_increments_round_trips_and_merges_replicas() -> None:
    values = [*lognormal_sample(10_000, seed=6), 0.0, 0.0]
    replicas = [sketch_of(values[:3_000]), sketch_of(values[3_000:])]
    rebuilt = LatencySketch.from_fields(hincrby_all(replicas))
    whole = sketch_of(values)
    assert rebuilt.bucket_counts() == whole.bucket_counts()
    assert (rebuilt.count, rebuilt.zero_count) == (whole.count, whole.zero_count)
    assert rebuilt.sum == pytest.approx(whole.sum, rel=1e-12)
    assert rebuilt.variance == pytest.approx(whole.variance, rel=1e-9)
    # Without the Lua-maintained extremes, min and max come from the outermost buckets.
    assert rebuilt.min == 0.0
    assert rebuilt.max == pytest.approx(whole.max, rel=whole.alpha)
    with_extremes = LatencySketch.from_fields({**hincrby_all(replicas), "min": "0.0", "max": str(whole.max)})
    assert with_extremes.max == whole.max
    for q in QUANTILES:
        assert with_extremes.quantile(q) == whole.quantile(q)


def test_increments_through_a_real_redis(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    values = lognormal_sample(5_000, seed=7)
    replicas = [sketch_of(values[:2_000]), sketch_of(values[2_000:])]
    for replica in replicas:  # each replica flushes its delta atomically, in one pipeline
        counts, sums = replica.to_increments()
        pipe = client.pipeline(transaction=True)
        for key, n in counts.items():
            pipe.hincrby("exp:e1:candidate:ttft", key, n)
        for key, total in sums.items():
            pipe.hincrbyfloat("exp:e1:candidate:ttft", key, total)
        pipe.execute()
    rebuilt = LatencySketch.from_fields(client.hgetall("exp:e1:candidate:ttft"))
    whole = sketch_of(values)
    assert rebuilt.bucket_counts() == whole.bucket_counts()
    assert rebuilt.count == whole.count
    assert rebuilt.mean == pytest.approx(whole.mean, rel=1e-12)
    client.close()


def test_max_buckets_is_respected_and_collapse_only_touches_the_lowest_quantiles() -> None:
    rng = random.Random(8)
    # Log-uniform over twelve decades: about 1,400 buckets at alpha 0.01, far more than 200.
    values = [10 ** rng.uniform(-6, 6) for _ in range(50_000)]
    ordered = sorted(values)
    sketch = sketch_of(values, max_buckets=200)
    assert len(sketch.bucket_counts()) <= 200
    assert sketch.count == len(values)
    for q in QUANTILES:
        true, estimate = exact_quantile(ordered, q), sketch.quantile(q)
        assert estimate >= true * (1 - sketch.alpha) * (1 - 1e-9)  # collapse never reads low
        if q >= 0.9:  # the top 200 buckets span more than the top 10% of this sample
            assert abs(estimate - true) <= sketch.alpha * true * (1 + 1e-9)
    assert sketch.quantile(0.1) > exact_quantile(ordered, 0.1) * 2  # the low end did collapse
    # Merging two collapsed sketches stays bounded too.
    other = sketch_of([10 ** rng.uniform(-9, 3) for _ in range(10_000)], max_buckets=200)
    sketch.merge(other)
    assert len(sketch.bucket_counts()) <= 200
    assert sketch.count == 60_000
