"""`AdaptiveK` against the reference's cost model (§5.2 table), its fallback hysteresis and re-probing,
the online verify-cost fit, and the `SpecStats` counters. All times are injected; nothing is timed."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.speculative.adaptive_k import (
    AdaptiveK,
    AdaptiveKConfig,
    LinearCostFit,
    SpecStats,
    SpeculationPrior,
    expected_tokens,
)
from gateway.speculative.interfaces import RoundResult

MS = 0.001

# The reference's illustrative scenarios (ms): t_T, t_d, R_d, R_t, c_p.
SCENARIOS = {
    "A": (25, 5, 3, 4, 0.5),
    "B": (25, 30, 3, 4, 0.5),
    "C": (25, 8, 0, 40, 0.5),
    "D": (25, 0, 0, 4, 0.5),
    "E": (8, 3, 3, 4, 0.2),
}


def prior(scenario: str, alpha: float = 0.6) -> SpeculationPrior:
    t_target, t_draft, r_draft, r_target, c_verify = SCENARIOS[scenario]
    return SpeculationPrior(
        target_token_s=t_target * MS,
        target_call_s=r_target * MS,
        verify_token_s=c_verify * MS,
        draft_token_s=t_draft * MS,
        draft_call_s=r_draft * MS,
        alpha=alpha,
    )


def chooser(scenario: str = "D", alpha: float = 0.6, **config: Any) -> AdaptiveK:
    return AdaptiveK(prior(scenario, alpha), AdaptiveKConfig(**{"max_k": 12, **config}))


def scenario_round_s(scenario: str, k: int) -> tuple[float, float]:
    """What the scenario's draft and verify calls cost for k drafts, as a caller would measure them."""
    t_target, t_draft, r_draft, r_target, c_verify = SCENARIOS[scenario]
    return (r_draft + k * t_draft) * MS, (r_target + t_target + (k + 1) * c_verify) * MS


def test_expected_tokens() -> None:
    assert expected_tokens(0.0, 5) == 1.0
    assert expected_tokens(1.0, 5) == 6.0
    assert expected_tokens(0.5, 0) == pytest.approx(1.0)
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    # Continuous toward the alpha == 1 special case.
    assert expected_tokens(1 - 1e-12, 7) == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("scenario", "alpha", "speedup", "k"),
    [
        ("A", 0.6, 1.13, 2),
        ("A", 0.8, 1.54, 4),
        ("B", 0.6, 0.63, None),
        ("B", 0.8, 0.71, None),
        ("C", 0.6, 0.60, None),
        ("C", 0.8, 0.85, None),
        ("D", 0.6, 1.87, 6),
        ("D", 0.8, 3.33, 12),
        ("E", 0.6, 0.73, None),
        ("E", 0.8, 0.96, None),
    ],
)
def test_predicted_speedup_matches_the_reference_table(
    scenario: str, alpha: float, speedup: float, k: int | None
) -> None:
    best_k, best_s = chooser(scenario).best(alpha)
    assert round(best_s, 2) == speedup
    if k is not None:
        assert best_k == k


def test_scenario_d_numbers_at_the_prior_alpha() -> None:
    assert chooser("D", alpha=0.8).predicted_speedup(12) == pytest.approx(3.33, abs=0.005)
    assert chooser("D", alpha=0.6).predicted_speedup(6) == pytest.approx(1.87, abs=0.005)
    assert chooser("D", alpha=0.8).choose() == 12
    assert chooser("D", alpha=0.6).choose() == 6


def test_high_measured_acceptance_with_cheap_verification_chooses_a_large_k() -> None:
    adaptive = chooser("D", alpha=0.3)
    for _ in range(30):
        k = adaptive.choose()
        assert k >= 1
        adaptive.observe_round(k, k, *scenario_round_s("D", k))
    assert adaptive.alpha > 0.95
    assert adaptive.choose() == 12


def test_scenario_b_never_speculates() -> None:
    # t_d > t_T: even alpha = 1 cannot pay for the drafts, so neither the prior nor a re-probe speculates.
    adaptive = chooser("B", alpha=1.0)
    assert adaptive.plain
    for _ in range(200):
        assert adaptive.choose() == 0
        adaptive.observe_plain(1, 25 * MS)


def fall_back(adaptive: AdaptiveK, scenario: str, accept: float) -> int:
    """Runs rounds accepting a fraction `accept` of the drafts until `choose` returns 0; the rounds run."""
    for rounds in range(1, 100):
        k = adaptive.choose()
        if k == 0:
            return rounds
        adaptive.observe_round(k, int(k * accept), *scenario_round_s(scenario, k))
    raise AssertionError("never fell back")


def test_low_acceptance_falls_back_only_after_patience_low_predictions() -> None:
    adaptive = chooser("D", alpha=0.6, patience=3)
    low_in_a_row = 0
    for _ in range(100):
        predicted_low = adaptive.best()[1] < adaptive.config.min_speedup
        low_in_a_row = low_in_a_row + 1 if predicted_low else 0
        k = adaptive.choose()
        if k == 0:
            break
        assert low_in_a_row < 3
        adaptive.observe_round(k, 0, *scenario_round_s("D", k))
    else:
        raise AssertionError("never fell back")
    assert low_in_a_row == 3
    assert adaptive.plain


def test_a_good_round_resets_the_hysteresis() -> None:
    adaptive = chooser("D", alpha=0.6, patience=3)
    while adaptive.best()[1] >= 1.05:
        adaptive.observe_round(4, 0, *scenario_round_s("D", 4))
    assert adaptive.choose() > 0
    assert adaptive.choose() > 0  # two low predictions: still speculating
    for _ in range(20):
        adaptive.observe_round(6, 6, *scenario_round_s("D", 6))
    assert adaptive.choose() > 0
    while adaptive.best()[1] >= 1.05:
        adaptive.observe_round(4, 0, *scenario_round_s("D", 4))
    assert adaptive.choose() > 0 and adaptive.choose() > 0  # the count started over
    assert adaptive.choose() == 0


def test_expensive_drafts_fall_back_whatever_the_acceptance() -> None:
    adaptive = chooser("A", alpha=0.8, patience=2)
    for _ in range(10):
        k = adaptive.choose()
        if k == 0:
            break
        # Every draft call measured at 40 ms per token, full acceptance.
        adaptive.observe_round(k, k, k * 40 * MS, scenario_round_s("A", k)[1])
    assert adaptive.choose() == 0


def test_reprobes_with_k_2_every_32_plain_tokens() -> None:
    adaptive = chooser("D", alpha=0.6, patience=2)
    fall_back(adaptive, "D", accept=0.0)
    for _ in range(3):
        assert adaptive.plain_tokens_until_probe == 32
        for _ in range(31):
            assert adaptive.choose() == 0
            adaptive.observe_plain(1, 25 * MS)
        assert adaptive.choose() == 0
        adaptive.observe_plain(1, 25 * MS)
        assert adaptive.plain_tokens_until_probe == 0
        assert adaptive.choose() == 2
        adaptive.observe_round(2, 0, *scenario_round_s("D", 2))  # the probe fails: stay plain
        assert adaptive.choose() == 0
        assert adaptive.plain


def test_successful_probes_resume_speculation() -> None:
    adaptive = chooser("D", alpha=0.6, patience=2)
    fall_back(adaptive, "D", accept=0.0)
    for _ in range(1000):
        k = adaptive.choose()
        if k > 2:
            break
        if k == 0:
            adaptive.observe_plain(1, 25 * MS)
        else:
            adaptive.observe_round(k, k, *scenario_round_s("D", k))
    else:
        raise AssertionError("never resumed")
    assert not adaptive.plain


def test_a_pessimistic_prior_starts_plain_and_probes() -> None:
    adaptive = chooser("D", alpha=0.05)
    assert adaptive.plain
    assert adaptive.choose() == 0
    adaptive.observe_plain(32, 32 * 25 * MS)
    assert adaptive.choose() == 2


def test_load_cap_lowers_k() -> None:
    adaptive = chooser("D", alpha=0.8)
    assert adaptive.choose() == 12
    adaptive.load_cap(4)
    assert adaptive.k_cap == 4
    assert adaptive.choose() == 4
    adaptive.load_cap(0)
    assert adaptive.choose() == 0
    adaptive.load_cap(100)  # never above the configured max_k
    assert adaptive.k_cap == 12
    assert adaptive.choose() == 12


def test_load_cap_bounds_the_probe() -> None:
    adaptive = chooser("D", alpha=0.05)
    adaptive.load_cap(1)
    adaptive.observe_plain(32, 32 * 25 * MS)
    assert adaptive.choose() == 1


def test_verify_cost_fit_recovers_intercept_and_slope_from_noisy_samples() -> None:
    rng = random.Random(7)
    fit = LinearCostFit(0.010, 0.0001, decay=0.95, prior_weight=1.0)
    a, b = 0.030, 0.002
    for _ in range(300):
        k = rng.randint(1, 12)
        fit.observe(k, a + b * k + rng.uniform(-0.001, 0.001))
    assert fit.intercept == pytest.approx(a, rel=0.05)
    assert fit.slope == pytest.approx(b, rel=0.1)


def test_verify_cost_fit_moves_the_intercept_when_k_never_varies() -> None:
    fit = LinearCostFit(0.030, 0.001, decay=0.9, prior_weight=1.0)
    for _ in range(50):
        fit.observe(8, 0.060)  # the target got loaded
    assert fit.slope == pytest.approx(0.001)
    assert fit.predict(8) == pytest.approx(0.060)


def test_verify_cost_fit_never_goes_negative() -> None:
    fit = LinearCostFit(0.001, 0.001, decay=0.95, prior_weight=1.0)
    for k, seconds in [(1, 0.010), (2, 0.008), (3, 0.006), (4, 0.004)]:
        fit.observe(k, seconds)
    assert fit.slope >= 0.0 and fit.intercept >= 0.0


def test_a_loaded_target_lowers_the_chosen_k() -> None:
    adaptive = chooser("D", alpha=0.8)
    assert adaptive.choose() == 12
    rng = random.Random(3)
    # The verify call now costs 4 ms per verified token instead of 0.5; drafts sometimes come up short,
    # which is what lets the per-token cost be told apart from the per-call cost.
    for _ in range(60):
        drafted = rng.randint(1, adaptive.choose())
        accepted = next((i for i in range(drafted) if rng.random() >= 0.8), drafted)
        adaptive.observe_round(drafted, accepted, 0.0, (4 + 25 + 4 * (drafted + 1)) * MS)
    assert adaptive.verify_fit.slope == pytest.approx(4 * MS, rel=0.1)
    # The model's optimum at alpha 0.8 and c_p 4 ms is k = 5 (fixing alpha keeps its noise out of this).
    assert 3 <= adaptive.best(alpha=0.8)[0] <= 7
    assert adaptive.choose() >= 1


def test_censored_rounds_do_not_count_a_rejection() -> None:
    censored, rejected = chooser("D", alpha=0.5), chooser("D", alpha=0.5)
    for _ in range(10):
        censored.observe_round(4, 2, 0.0, 0.03, censored=True)
        rejected.observe_round(4, 2, 0.0, 0.03)
    assert censored.alpha > 0.95
    assert rejected.alpha == pytest.approx(2 / 3, abs=0.05)


def test_observe_round_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        chooser().observe_round(2, 3, 0.0, 0.03)


def test_plain_steps_update_the_target_token_time() -> None:
    adaptive = chooser("D")
    for _ in range(100):
        adaptive.observe_plain(4, 4 * 40 * MS)
    assert adaptive.target_token_s == pytest.approx(40 * MS, rel=1e-3)


def test_spec_stats_counts_and_header() -> None:
    stats = SpecStats()
    for k, accepted in [(4, 3), (4, 4), (2, 0)]:
        stats.record_choice(k)
        tokens = list(range(accepted + 1))
        stats.record_round(RoundResult(tokens=tokens, accepted=accepted, drafted=k, tie=False))
    stats.record_choice(0)
    stats.record_plain(5)
    stats.record_fallback("draft_error")
    stats.record_fallback("draft_error")
    assert stats.rounds == 3
    assert stats.acceptance_rate == pytest.approx(7 / 10)
    assert stats.tokens_per_target_call == pytest.approx((4 + 5 + 1 + 5) / 4)
    assert stats.k_chosen == {4: 2, 2: 1, 0: 1}
    assert stats.fallbacks == {"draft_error": 2}
    assert stats.header_value() == "rounds=3; drafted=10; accepted=7; target_calls=4"
    assert stats.as_dict() == {"rounds": 3, "drafted": 10, "accepted": 7, "target_calls": 4}


def test_spec_stats_empty() -> None:
    stats = SpecStats()
    assert stats.acceptance_rate == 0.0
    assert stats.tokens_per_target_call == 0.0
    assert stats.header_value() == "rounds=0; drafted=0; accepted=0; target_calls=0"
