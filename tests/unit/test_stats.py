"""LocalStats: decayed means, peak behaviour, in-flight counts and derived throughput."""

from __future__ import annotations

import pytest

from gateway.backend import BackendLoad
from gateway.routing.stats import DecayedCount, DecayedMean, LocalStats


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_backend_never_seen_has_no_samples() -> None:
    stats = LocalStats(10.0, FakeClock())
    got = stats.get("x")
    assert got.samples == 0 and got.ttft_s is None and got.in_flight == 0


def test_decayed_mean_weights_recent_samples_more() -> None:
    mean = DecayedMean()
    mean.add(1.0, 0.0, 10.0)
    mean.add(3.0, 10.0, 10.0)  # the first sample now weighs half
    assert mean.mean == pytest.approx((0.5 * 1 + 3) / 1.5)


def test_samples_at_one_instant_average_evenly() -> None:
    mean = DecayedMean()
    for value in (1.0, 2.0, 3.0):
        mean.add(value, 5.0, 10.0)
    assert mean.mean == pytest.approx(2.0)


def test_a_peak_is_the_value_at_once_and_fades_back_to_the_mean_without_samples() -> None:
    mean = DecayedMean(peak=True)
    for t in range(10):
        mean.add(1.0, float(t), 10.0)
    mean.add(5.0, 10.0, 10.0)
    assert mean.value_at(10.0, 10.0) == pytest.approx(5.0)  # one slow answer is enough to be avoided
    plain = mean.mean
    assert plain is not None and 1.0 < plain < 2.0
    # The excess halves every 2.5 s (a quarter of the half-life), sampled or not.
    assert mean.value_at(12.5, 10.0) == pytest.approx(plain + (5.0 - plain) / 2)
    faded = mean.value_at(40.0, 10.0)
    assert faded is not None and faded - plain < 0.01
    mean.add(3.0, 40.0, 10.0)  # above the faded value: a new peak
    assert mean.value_at(40.0, 10.0) == pytest.approx(3.0)


def test_a_sample_below_the_value_leaves_the_peak_fading() -> None:
    mean = DecayedMean(peak=True)
    mean.add(1.0, 0.0, 10.0)
    mean.add(4.0, 1.0, 10.0)
    mean.add(1.0, 1.0, 10.0)
    value = mean.value_at(1.0, 10.0)
    assert value == pytest.approx(4.0)


def test_decayed_count_halves_every_half_life() -> None:
    count = DecayedCount()
    count.add(8.0, 0.0, 2.0)
    assert count.read(2.0, 2.0) == pytest.approx(4.0)
    assert count.read(6.0, 2.0) == pytest.approx(1.0)


def test_in_flight_error_rate_and_tpot() -> None:
    clock = FakeClock()
    stats = LocalStats(10.0, clock)
    stats.started("a")
    stats.started("a")
    assert stats.get("a").in_flight == 2
    stats.first_token("a", 0.2)
    stats.finished("a", ok=True, e2e_s=1.2, ttft_s=0.2, output_tokens=11)
    stats.finished("a", ok=False, e2e_s=0.1, ttft_s=None, output_tokens=None)
    got = stats.get("a")
    assert got.in_flight == 0
    assert got.error_rate == pytest.approx(0.5)
    assert got.ttft_s == pytest.approx(0.2)
    assert got.tpot_s == pytest.approx(0.1)
    assert got.output_tokens == pytest.approx(11)
    # one request at 11 tok / 1.2 s, with 1.5 requests open on average when each started
    assert got.output_tokens_per_s == pytest.approx(11 / 1.2 * 1.5)


def test_non_stream_tpot_uses_the_ttft_mean() -> None:
    stats = LocalStats(10.0, FakeClock())
    stats.started("a")
    stats.first_token("a", 0.5)
    stats.finished("a", ok=True, e2e_s=1.5, ttft_s=0.5, output_tokens=11)
    stats.started("a")
    stats.finished("a", ok=True, e2e_s=2.5, ttft_s=None, output_tokens=11)
    assert stats.get("a").tpot_s == pytest.approx(0.2)  # the peak: (2.5 - 0.5) / 10


def test_in_flight_never_goes_negative_and_load_is_reported() -> None:
    stats = LocalStats(10.0, FakeClock())
    stats.finished("a", ok=True, e2e_s=1.0, ttft_s=None, output_tokens=None)
    stats.observe_load("a", BackendLoad(running=2, waiting=5, capacity=4, kv_cache_usage=0.5))
    got = stats.get("a")
    assert got.in_flight == 0 and got.queued == 5 and got.capacity == 4 and got.running == 2


def test_recent_requests_decay_with_time() -> None:
    clock = FakeClock()
    stats = LocalStats(2.0, clock)
    for _ in range(4):
        stats.started("a")
    assert stats.get("a").recent_requests == pytest.approx(4.0)
    clock.now += 4.0
    assert stats.get("a").recent_requests == pytest.approx(1.0)


def test_a_request_that_is_no_sample_only_lowers_in_flight() -> None:
    stats = LocalStats(10.0, FakeClock())
    stats.started("a")
    stats.finished("a", ok=None, e2e_s=0.001, ttft_s=None, output_tokens=None)
    got = stats.get("a")
    assert got.in_flight == 0 and got.samples == 0 and got.e2e_s is None


def test_the_engines_counts_lose_the_gateways_own_requests() -> None:
    from gateway.routing.load_monitor import others_load

    load = BackendLoad(running=3, waiting=2, capacity=4, kv_cache_usage=0.3)
    assert others_load(load, 0) == load
    assert others_load(load, 2) == BackendLoad(running=1, waiting=2, capacity=4, kv_cache_usage=0.3)
    assert others_load(load, 4) == BackendLoad(running=0, waiting=1, capacity=4, kv_cache_usage=0.3)
    assert others_load(load, 9) == BackendLoad(running=0, waiting=0, capacity=4, kv_cache_usage=0.3)
    assert others_load(BackendLoad(), 3) == BackendLoad()
