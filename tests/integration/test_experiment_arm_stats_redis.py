"""`RedisArmStats` on a real redis-server: two replicas merge exactly, feedback lands on its arm, and a
killed Redis never reaches `record()` or the background flusher (`totals` raises `ArmStatsUnavailable`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from redis_server import RedisServer

from gateway.config import RedisConfig
from gateway.experiments.arm_stats import (
    ArmObservation,
    ArmStatsUnavailable,
    ArmTotals,
    InProcessArmStats,
    RedisArmStats,
)

Factory = Callable[..., RedisArmStats]


@pytest_asyncio.fixture
async def stores() -> AsyncIterator[Factory]:
    made: list[RedisArmStats] = []

    def make(url: str, **options: Any) -> RedisArmStats:
        store = RedisArmStats(RedisConfig(url=url), **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


def observations(n: int, seed: int) -> list[ArmObservation]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        arm = rng.choice(["control", "cand:1"])  # ':' in a name must not break the key layout
        e2e = rng.lognormvariate(0, 1)
        out.append(ArmObservation("exp/1", arm, rng.random() > 0.1, ttft_s=e2e / 5, tpot_s=rng.uniform(0.01, 0.05),
                                  e2e_s=e2e, input_tokens=rng.randint(1, 500), output_tokens=rng.randint(1, 500),
                                  cost_usd=rng.uniform(0, 0.01)))
    return out


def assert_same(got: ArmTotals, want: ArmTotals) -> None:
    assert (got.requests, got.errors, got.input_tokens, got.output_tokens) == (
        want.requests, want.errors, want.input_tokens, want.output_tokens)
    assert got.cost_usd == pytest.approx(want.cost_usd, rel=1e-12)
    for metric, sketch in want.sketches.items():
        mine = got.sketches[metric]
        assert mine.bucket_counts() == sketch.bucket_counts(), metric
        assert (mine.count, mine.zero_count, mine.min, mine.max) == (sketch.count, sketch.zero_count, sketch.min,
                                                                     sketch.max)
        assert mine.sum == pytest.approx(sketch.sum, rel=1e-12)
        assert mine.sum_sq == pytest.approx(sketch.sum_sq, rel=1e-12)
    assert (got.feedback_count, got.score_count, got.labels) == (want.feedback_count, want.score_count, want.labels)
    assert got.score_sum == pytest.approx(want.score_sum)
    assert got.score_sumsq == pytest.approx(want.score_sumsq)


async def test_two_replicas_merge_like_one_store(redis_server: RedisServer, stores: Factory) -> None:
    reference = InProcessArmStats()
    replicas = [stores(redis_server.url, flush_interval_s=0.02), stores(redis_server.url, flush_interval_s=0.02)]
    for replica in replicas:
        await replica.start()
    for i, ob in enumerate(observations(2000, seed=3)):
        replicas[i % 2].record(ob)
        reference.record(ob)
        if i % 200 == 0:
            await asyncio.sleep(0.03)  # let the flushers run mid-stream, so several flushes add up
    for i, (arm, score, label) in enumerate([("control", 1.0, "good"), ("cand:1", -1.0, None),
                                             ("cand:1", None, "bad"), ("control", 0.5, None)]):
        replicas[i % 2].record_feedback("exp/1", arm, score, label)
        reference.record_feedback("exp/1", arm, score, label)
    for replica in replicas:
        assert await replica.flush()
        assert replica.pending_batches == 0
    got, want = await replicas[0].totals("exp/1"), await reference.totals("exp/1")
    assert set(got) == set(want) == {"control", "cand:1"}
    for arm in want:
        assert_same(got[arm], want[arm])
    assert got["control"].labels == {"good": 1} and got["cand:1"].labels == {"bad": 1}
    assert await replicas[1].totals("nobody") == {}

    await replicas[1].reset("exp/1")
    assert await replicas[0].totals("exp/1") == {}


async def test_killed_redis_never_reaches_record(redis_server: RedisServer, stores: Factory,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    store = stores(redis_server.url, flush_interval_s=0.01, max_pending_batches=3)
    await store.start()
    store.record(observations(1, seed=1)[0])
    assert await store.flush()
    redis_server.kill()
    started = time.monotonic()
    for ob in observations(200, seed=2):
        store.record(ob)
        store.record_feedback("exp/1", ob.arm, 1.0, None)
    assert time.monotonic() - started < 0.5  # record() is a local merge, whatever Redis does
    for _ in range(6):  # more failed flushes than the bound: the oldest batches are dropped
        store.record(observations(1, seed=4)[0])
        assert not await store.flush()
    assert store.pending_batches == 3 and store.dropped > 0
    await asyncio.sleep(0.05)  # the background flusher keeps failing quietly
    assert store._flusher.running
    with pytest.raises(ArmStatsUnavailable):
        await asyncio.wait_for(store.totals("exp/1"), 2.0)
    with pytest.raises(ArmStatsUnavailable):
        await asyncio.wait_for(store.reset("exp/1"), 2.0)
    await asyncio.wait_for(store.aclose(), 2.0)  # final flush fails, logged, not raised
    assert not any(r.levelname == "ERROR" for r in caplog.records)
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1  # logged once


async def test_a_flush_whose_reply_was_lost_is_not_counted_twice(redis_server: RedisServer,
                                                                  stores: Factory) -> None:
    """Redis applied the flush but the reply never came (a timeout): the retry is the same flush under
    the same number, which the script recognises and skips; later batches still land once."""
    import redis.exceptions

    store = stores(redis_server.url, retry_s=0.01)  # not started: this test flushes by hand
    real = store._flush_script
    applied = 0

    async def reply_lost(**kwargs: Any) -> Any:
        nonlocal applied
        applied += 1
        await real(**kwargs)
        raise redis.exceptions.TimeoutError("the reply was lost")

    reference = InProcessArmStats()
    first, later = observations(40, seed=5), observations(25, seed=6)
    for ob in first:
        store.record(ob)
        reference.record(ob)
    store._flush_script = reply_lost  # type: ignore[assignment]
    assert not await store.flush() and applied == 1
    store._flush_script = real
    for ob in later:  # recorded while the first flush is in doubt: they go in a flush of their own
        store.record(ob)
        reference.record(ob)
    for _ in range(200):  # the guard may hold off a moment after the failure
        if await store.flush():
            break
        await asyncio.sleep(0.01)
    assert store.pending_batches == 0
    got, want = await store.totals("exp/1"), await reference.totals("exp/1")
    assert got.keys() == want.keys()
    for arm in want:
        assert_same(got[arm], want[arm])
    sequence_key = f"{store.key_prefix}flushed:{store.writer_id}"
    assert int(await store.redis.get(sequence_key)) == 2  # the first flush and the later one
    assert 0 < await store.redis.ttl(sequence_key) <= 86_400
