"""Each policy's ordering and reasons, on hand-built statistics."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from gateway.config import CostConfig, RouteConfig, SloConfig, StatsConfig
from gateway.routing.cost import CostPolicy, request_cost_usd, token_prices, usd
from gateway.routing.interfaces import BackendStats, Policy, RequestFeatures
from gateway.routing.latency import DEFAULT_OUTPUT_TOKENS, LatencyPolicy, expected_output_tokens, predict, seconds
from gateway.routing.policies import LeastLoadedPolicy, WeightedPolicy, make_policy
from gateway.routing.stats import LocalStats

from .fakes import FakeBackend, make_backend


class HandStats(LocalStats):
    """Live statistics that answer with what a test wrote down (the writers are LocalStats')."""

    def __init__(self, **stats: BackendStats) -> None:
        super().__init__()
        self.stats = stats

    def get(self, backend: str) -> BackendStats:
        return self.stats.get(backend, BackendStats())


def measured(ttft: float, tpot: float, **extra: Any) -> BackendStats:
    """A backend with samples: `ttft` and `tpot` seconds, 100 tokens a request, idle."""
    values: dict[str, Any] = {"ttft_s": ttft, "tpot_s": tpot, "e2e_s": ttft + tpot * 99, "output_tokens": 100.0,
                              "samples": 20.0}
    values.update(extra)
    return BackendStats(**values)


def chat(max_tokens: int | None = None, content: str = "hello") -> RequestFeatures:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return RequestFeatures("chat", body)


def picks(policy: Policy, candidates: list[FakeBackend], stats: HandStats, request: RequestFeatures | None = None,
          n: int = 1) -> Counter[str]:
    request = request or chat()
    return Counter(policy.rank(candidates, request, stats)[0].backend.name for _ in range(n))  # type: ignore[arg-type]


def rank(policy: Policy, candidates: list[FakeBackend], stats: HandStats,
         request: RequestFeatures | None = None) -> list[tuple[str, str]]:
    choices = policy.rank(candidates, request or chat(), stats)  # type: ignore[arg-type]
    return [(c.backend.name, c.reason) for c in choices]


def latency(explore_ratio: float = 0.0, seed: int = 1) -> LatencyPolicy:
    return LatencyPolicy(explore_ratio, random.Random(seed))


A, B, C = make_backend("a"), make_backend("b"), make_backend("c")


# -- weighted --------------------------------------------------------------------------------------


def test_weighted_is_smooth_weighted_round_robin() -> None:
    a, b, c = make_backend("a", weight=5), make_backend("b", weight=1), make_backend("c", weight=1)
    policy = WeightedPolicy()
    order = [policy.rank([a, b, c], chat(), HandStats())[0].backend.name for _ in range(14)]  # type: ignore[list-item]
    assert order == ["a", "a", "b", "a", "c", "a", "a"] * 2  # nginx's sequence: never five a's in a row
    first = rank(policy, [a, b, c], HandStats())
    assert first[0][1] == "weighted: weight 5 of 7"
    assert [name for name, _ in first[1:]] == ["b", "c"]
    assert all(reason.startswith("weighted fallback: weight 1") for _, reason in first[1:])


def test_weighted_zero_weight_is_only_a_fallback() -> None:
    a, b = make_backend("a", weight=0), make_backend("b", weight=2)
    policy = WeightedPolicy()
    assert picks(policy, [a, b], HandStats(), n=10) == {"b": 10}
    assert [name for name, _ in rank(policy, [a, b], HandStats())] == ["b", "a"]
    zero = [make_backend("x", weight=0), make_backend("y", weight=0)]
    assert [name for name, _ in rank(policy, zero, HandStats())] == ["x", "y"]  # type: ignore[arg-type]


# -- least_loaded ----------------------------------------------------------------------------------


def test_least_loaded_divides_work_by_slots_and_counts_the_engine_queue() -> None:
    stats = HandStats(
        a=BackendStats(in_flight=3, capacity=4),  # 0.75
        b=BackendStats(in_flight=1, running=3, queued=4, capacity=16),  # others' work too: 8/16 = 0.5
        c=BackendStats(in_flight=1),  # unknown capacity: one slot, 1.0
    )
    ranking = rank(LeastLoadedPolicy(), [A, B, C], stats)
    assert ranking == [
        ("b", "least_loaded: 8/16 slots busy"),
        ("a", "least_loaded fallback: 3/4 slots busy"),
        ("c", "least_loaded fallback: 1/1 slots busy"),
    ]


def test_least_loaded_uses_max_concurrency_when_the_engine_does_not_say() -> None:
    a, b = make_backend("a", max_concurrency=10), make_backend("b")
    stats = HandStats(a=BackendStats(in_flight=4), b=BackendStats(in_flight=1))
    assert rank(LeastLoadedPolicy(), [a, b], stats)[0] == ("a", "least_loaded: 4/10 slots busy")


def test_least_loaded_ties_rotate() -> None:
    policy = LeastLoadedPolicy()
    assert picks(policy, [A, B, C], HandStats(), n=30) == {"a": 10, "b": 10, "c": 10}


# -- latency: the prediction -----------------------------------------------------------------------


def test_expected_output_tokens() -> None:
    assert expected_output_tokens(chat(), []) == DEFAULT_OUTPUT_TOKENS
    assert expected_output_tokens(chat(max_tokens=16), []) == 16
    stats = [BackendStats(output_tokens=300.0, samples=1.0), BackendStats(output_tokens=100.0, samples=3.0)]
    assert expected_output_tokens(chat(), stats) == 150  # weighted by samples
    assert expected_output_tokens(chat(max_tokens=1000), stats) == 150  # max_tokens is only a cap


def test_prediction_is_ttft_plus_tpot_per_token_plus_the_wait_for_a_slot() -> None:
    idle = measured(0.2, 0.01, capacity=4.0)
    prediction = predict(A, idle, 101)
    assert prediction is not None
    assert prediction.ttft_s == pytest.approx(0.2) and prediction.total_s == pytest.approx(1.2)
    # Four slots busy and one queued: two must finish before this one starts, each slot frees once
    # per typical request (1.19 s), four slots at a time.
    busy = measured(0.2, 0.01, capacity=4.0, in_flight=5)
    waited = predict(A, busy, 101)
    assert waited is not None and waited.total_s == pytest.approx(1.2 + 2 / 4 * 1.19)
    assert predict(A, BackendStats(), 100) is None  # never observed
    # Unknown parallelism counts as one slot: one request in flight doubles the time.
    single = predict(A, measured(0.2, 0.01, in_flight=1), 100)
    assert single is not None and single.total_s == pytest.approx(1.19 + 1.19)


def test_prediction_without_streams_uses_end_to_end_time() -> None:
    no_ttft = BackendStats(e2e_s=2.0, tpot_s=0.01, output_tokens=101.0, samples=5.0)
    prediction = predict(A, no_ttft, 201)
    assert prediction is not None and prediction.total_s == pytest.approx(3.0)  # 1 s overhead + 2 s of tokens
    only_e2e = predict(A, BackendStats(e2e_s=2.0, samples=5.0), 50)
    assert only_e2e is not None and only_e2e.total_s == 2.0


def test_errors_make_a_backend_look_slower() -> None:
    clean, failing = predict(A, measured(0.1, 0.01), 100), predict(A, measured(0.1, 0.01, error_rate=0.5), 100)
    assert clean is not None and failing is not None
    assert failing.total_s == pytest.approx(2 * clean.total_s)


# -- latency: the policy ---------------------------------------------------------------------------


def test_latency_picks_the_fastest_for_this_request_and_says_why() -> None:
    stats = HandStats(a=measured(0.5, 0.01), b=measured(0.1, 0.05), c=measured(1.0, 0.10))
    ranking = rank(latency(), [A, B, C], stats, chat(max_tokens=200))
    assert [name for name, _ in ranking] == ["a", "b", "c"]  # 0.5 + 0.99 beats 0.1 + 4.95 for 100 tokens
    assert ranking[0][1] == "latency: predicted 1.49s vs next 5.05s"
    assert ranking[1][1] == "latency fallback: predicted 5.05s"
    # A one-token answer is all TTFT: now b is the fastest.
    assert rank(latency(), [A, B, C], stats, chat(max_tokens=1))[0] == ("b", "latency: predicted 0.1s vs next 0.5s")


def test_latency_moves_away_from_a_full_backend() -> None:
    stats = HandStats(a=measured(0.1, 0.01, capacity=2.0, in_flight=6), b=measured(0.2, 0.02, capacity=2.0))
    assert picks(latency(), [A, B], stats, n=20) == {"b": 20}


def test_latency_draws_two_choices_among_competitive_backends() -> None:
    # a, b and c within 1.5x of the best take part in the draw; the better of each pair wins, so
    # a wins two pairs in three, b one (b-c), and c none. d, at 3x, is never drawn.
    stats = HandStats(a=measured(0.1, 0.010), b=measured(0.1, 0.011), c=measured(0.1, 0.012), d=measured(0.1, 0.03))
    d = make_backend("d")
    counts = picks(latency(), [A, B, C, d], stats, n=600)
    assert set(counts) == {"a", "b"}
    assert 0.6 < counts["a"] / 600 < 0.73
    reason = rank(latency(), [A, B, C, d], stats)[0][1]
    assert reason.startswith("latency: predicted") and reason.endswith("(p2c of 3)")
    # Two competitive backends: the better one always wins its pair.
    assert picks(latency(), [A, B, d], stats, n=50) == {"a": 50}


def test_a_backend_never_observed_gets_one_request_at_a_time() -> None:
    stats = HandStats(a=measured(0.1, 0.01))
    assert rank(latency(), [A, B], stats)[0] == ("b", "explore: no samples yet")
    stats.stats["b"] = BackendStats(in_flight=1)  # its first request is still out
    ranking = rank(latency(), [A, B], stats)
    assert ranking == [("a", "latency: predicted 1.09s (only measured backend)"),
                       ("b", "latency fallback: no samples yet")]


def test_with_nothing_observed_the_least_busy_backend_is_tried() -> None:
    stats = HandStats(a=BackendStats(in_flight=1), b=BackendStats(in_flight=1), c=BackendStats(in_flight=2))
    ranking = rank(latency(), [A, B, C], stats)
    assert ranking[0][0] in ("a", "b") and ranking[0][1] == "explore: no samples on any backend, fewest in flight"
    assert ranking[-1][0] == "c"


def test_exploration_goes_to_an_idle_backend_that_is_not_the_pick() -> None:
    stats = HandStats(a=measured(0.1, 0.01), b=measured(0.5, 0.05), c=measured(0.5, 0.05, in_flight=1))
    counts = picks(latency(explore_ratio=1.0), [A, B, C], stats, n=50)
    assert counts == {"b": 50}  # c is busy: never more than one exploring request at a time
    assert rank(latency(explore_ratio=1.0), [A, B, C], stats)[0] == ("b", "explore: 100% probe, predicted 5.45s")
    share = picks(latency(explore_ratio=0.1), [A, B, C], stats, n=2000)
    assert 0.06 < share["b"] / 2000 < 0.14


def test_reasons_are_ascii_for_the_header() -> None:
    stats = HandStats(a=measured(0.1, 0.01), b=measured(0.1, 0.012))
    policies: list[Policy] = [make_policy(name, RouteConfig(model="m", backends=[], slo=SloConfig(ttft_ms=500)),
                                          StatsConfig(), rng=random.Random(1)) for name in
                              ("first_healthy", "round_robin", "weighted", "least_loaded", "latency", "cost",
                               "prefix_affinity")]
    for policy in policies:
        for _, reason in rank(policy, [A, B, C], stats):
            assert reason.isascii() and reason.startswith(("explore", policy.name)), reason


def test_seconds_format() -> None:
    assert [seconds(v) for v in (0.41, 1.2, 12.345, 0.000123, 1234.5)] == ["0.41s", "1.2s", "12.3s", "0.000123s",
                                                                           "1234s"]


# -- cost ------------------------------------------------------------------------------------------


def priced(name: str, input_per_mtok: float = 0.0, output_per_mtok: float = 0.0,
           gpu_hour_usd: float | None = None) -> FakeBackend:
    return make_backend(name, cost=CostConfig(input_per_mtok=input_per_mtok, output_per_mtok=output_per_mtok,
                                              gpu_hour_usd=gpu_hour_usd))


def cost_policy(ttft_ms: float | None = 500, e2e_ms: float | None = None, explore_ratio: float = 0.0) -> CostPolicy:
    return CostPolicy(SloConfig(ttft_ms=ttft_ms, e2e_ms=e2e_ms), explore_ratio, random.Random(1))


CHEAP, MID, DEAR = priced("cheap", 0.1, 0.2), priced("mid", 0.5, 1.5), priced("dear", 2.0, 6.0)


def test_cost_picks_the_cheapest_backend_meeting_the_slo() -> None:
    stats = HandStats(cheap=measured(0.9, 0.01), mid=measured(0.3, 0.01), dear=measured(0.05, 0.005))
    ranking = rank(cost_policy(), [DEAR, MID, CHEAP], stats, chat(max_tokens=100, content="x" * 4000))
    # 1000 input tokens + 100 output at $0.5/$1.5 per million: $0.00065.
    assert ranking[0] == ("mid", "cost: $0.00065 meets slo ttft<=500ms (predicted ttft 0.3s)")
    assert ranking[1] == ("dear", "cost fallback: $0.0026 meets slo")
    assert ranking[2][0] == "cheap" and ranking[2][1].startswith("cost fallback: $0.00012 misses slo")


def test_cost_switches_when_the_cheap_backend_violates_the_slo_and_back() -> None:
    policy = cost_policy()
    stats = HandStats(cheap=measured(0.2, 0.01), mid=measured(0.1, 0.01))
    assert rank(policy, [MID, CHEAP], stats)[0][0] == "cheap"
    stats.stats["cheap"] = measured(0.7, 0.01)
    assert rank(policy, [MID, CHEAP], stats)[0][0] == "mid"
    # A full cheap backend misses the SLO through its queue, not its speed.
    stats.stats["cheap"] = measured(0.2, 0.01, capacity=2.0, in_flight=4)
    assert rank(policy, [MID, CHEAP], stats)[0][0] == "mid"


def test_cost_takes_the_fastest_when_none_meets_the_slo() -> None:
    stats = HandStats(cheap=measured(0.9, 0.01), mid=measured(0.6, 0.01), dear=measured(0.7, 0.001))
    ranking = rank(cost_policy(), [CHEAP, MID, DEAR], stats, chat(max_tokens=100))
    assert ranking[0][0] == "dear"  # 0.7 + 0.099 beats 0.6 + 0.99
    assert ranking[0][1].startswith("cost: none meets slo ttft<=500ms, fastest predicted 0.799s")
    assert [name for name, _ in ranking] == ["dear", "mid", "cheap"]


def test_cost_with_an_end_to_end_slo_and_without_any() -> None:
    stats = HandStats(cheap=measured(0.1, 0.05), mid=measured(0.1, 0.01))
    assert rank(cost_policy(ttft_ms=None, e2e_ms=2000), [MID, CHEAP], stats)[0][0] == "mid"  # cheap: 5.05 s
    assert rank(cost_policy(ttft_ms=None, e2e_ms=6000), [MID, CHEAP], stats)[0][0] == "cheap"
    no_slo = rank(cost_policy(ttft_ms=None), [MID, CHEAP], stats)[0]
    assert no_slo[0] == "cheap" and no_slo[1].startswith("cost: cheapest $")


def test_gpu_hour_price_comes_from_measured_throughput() -> None:
    gpu = priced("gpu", gpu_hour_usd=3.6)
    # $3.60 an hour is $0.001 a second; at 1000 tokens/s that is $1 per million output tokens.
    prices = token_prices(gpu.config, BackendStats(output_tokens_per_s=1000.0))
    assert prices is not None and prices.output_usd == pytest.approx(1e-6) and prices.input_usd == 0
    assert token_prices(gpu.config, BackendStats()) is None
    assert request_cost_usd(gpu.config, BackendStats(output_tokens_per_s=1000.0), 500, 2000) == pytest.approx(0.002)
    assert request_cost_usd(gpu.config, BackendStats(), 500, 2000) == 0.0  # machine time not apportioned yet
    assert request_cost_usd(MID.config, BackendStats(), 1_000_000, 2_000_000) == pytest.approx(0.5 + 3.0)


def test_a_busier_gpu_is_cheaper_per_token() -> None:
    gpu = priced("gpu", gpu_hour_usd=3.6)
    slow = measured(0.1, 0.01, output_tokens_per_s=100.0)  # $10 per million output tokens
    busy = measured(0.1, 0.01, output_tokens_per_s=10_000.0)  # $0.10 per million
    request = chat(max_tokens=100)
    assert rank(cost_policy(), [MID, gpu], HandStats(mid=measured(0.1, 0.01), gpu=slow), request)[0][0] == "mid"
    assert rank(cost_policy(), [MID, gpu], HandStats(mid=measured(0.1, 0.01), gpu=busy), request)[0][0] == "gpu"


def test_cost_explores_a_backend_of_unknown_cost_gently() -> None:
    gpu = priced("gpu", gpu_hour_usd=1.0)
    stats = HandStats(mid=measured(0.1, 0.01), gpu=measured(0.1, 0.01))  # no throughput measured yet
    assert rank(cost_policy(), [MID, gpu], stats)[0] == ("gpu", "explore: no samples yet")
    stats.stats["gpu"] = measured(0.1, 0.01, in_flight=1)
    assert rank(cost_policy(), [MID, gpu], stats) == [
        ("mid", "cost: $0.00015 meets slo ttft<=500ms (predicted ttft 0.1s)"),
        ("gpu", "cost fallback: cost unknown yet"),
    ]


def test_usd_format() -> None:
    assert [usd(v) for v in (0.0, 0.00012, 0.0341, 1.5, 12.0)] == ["$0", "$0.00012", "$0.034", "$1.50", "$12.00"]
