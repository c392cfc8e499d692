"""SRM: the chi-square survival function against closed forms, goodness of fit, and the alarm's error rates."""

from __future__ import annotations

import math
import random

import pytest

from gateway.experiments.srm import SrmCheck, chi_square_sf, goodness_of_fit, upper_regularized_gamma


def sf_even(x: float, dof: int) -> float:
    """Closed form for even dof: exp(-x/2) * sum_{i<dof/2} (x/2)^i / i!."""
    half = x / 2.0
    return math.exp(-half) * math.fsum(half**i / math.factorial(i) for i in range(dof // 2))


def sf_odd(x: float, dof: int) -> float:
    """Closed form for odd dof: erfc(sqrt(x/2)) + exp(-x/2) * sum_{i=1..k} (x/2)^(i-1/2) / Γ(i+1/2)."""
    half = x / 2.0
    tail = math.fsum(half ** (i - 0.5) / math.gamma(i + 0.5) for i in range(1, (dof - 1) // 2 + 1))
    return math.erfc(math.sqrt(half)) + math.exp(-half) * tail


@pytest.mark.parametrize(
    ("x", "dof", "expected"),
    [
        (3.84, 1, 0.0500), (5.99, 2, 0.0500), (11.34, 3, 0.0100),
        (3.841458820694124, 1, 0.05), (6.6348966010212145, 1, 0.01), (5.991464547107979, 2, 0.05),
        (11.344866730144373, 3, 0.01), (23.209251158954356, 10, 0.01), (0.454936423119572, 1, 0.5),
    ],
)
def test_chi_square_sf_known_values(x: float, dof: int, expected: float) -> None:
    assert chi_square_sf(x, dof) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 5, 7, 10, 25, 50])
def test_chi_square_sf_matches_closed_forms_from_centre_to_far_tail(dof: int) -> None:
    closed = sf_even if dof % 2 == 0 else sf_odd
    for x in [0.01, 0.3, 1.0, dof - 0.5, dof + 1.0, dof + 3.0, 2.0 * dof + 5, 4.0 * dof + 40, 200.0]:
        if x <= 0:
            continue
        expected = closed(x, dof)
        # Relative, so the far tail (p of 1e-40 and below) is checked as closely as the centre.
        assert chi_square_sf(x, dof) == pytest.approx(expected, rel=1e-9, abs=1e-300), (x, dof)


def test_chi_square_sf_edges() -> None:
    assert chi_square_sf(0.0, 3) == 1.0
    assert chi_square_sf(-1.0, 3) == 1.0
    assert chi_square_sf(math.inf, 3) == 0.0
    assert 0.0 < chi_square_sf(200.0, 1) < 1e-40
    with pytest.raises(ValueError, match="degrees of freedom"):
        chi_square_sf(1.0, 0)
    with pytest.raises(ValueError):
        upper_regularized_gamma(0.0, 1.0)


def test_goodness_of_fit_statistic_and_shares_as_weights() -> None:
    statistic, p = goodness_of_fit([60, 40], [0.5, 0.5])
    assert statistic == pytest.approx(4.0)
    assert p == pytest.approx(chi_square_sf(4.0, 1))
    assert goodness_of_fit([800, 100, 100], [80, 10, 10]) == (0.0, 1.0)
    # A count where nothing was expected is impossible; an empty category with no share is ignored.
    assert goodness_of_fit([5, 5, 1], [0.5, 0.5, 0.0]) == (math.inf, 0.0)
    assert goodness_of_fit([60, 40, 0], [0.5, 0.5, 0.0]) == pytest.approx((4.0, chi_square_sf(4.0, 1)))
    assert goodness_of_fit([0, 0], [0.5, 0.5]) == (0.0, 1.0)
    with pytest.raises(ValueError):
        goodness_of_fit([1, 2], [1.0])
    with pytest.raises(ValueError):
        goodness_of_fit([1, 2], [0.0, 0.0])
    with pytest.raises(ValueError):
        goodness_of_fit([-1, 2], [0.5, 0.5])


def test_alarm_on_a_52_48_split_of_a_50_50_design() -> None:
    verdict = SrmCheck().check({"control": 10_400, "candidate": 9_600}, {"control": 0.5, "candidate": 0.5})
    assert verdict.mismatch
    assert verdict.p_value < 1e-7
    assert verdict.message.startswith("sample ratio mismatch: ")
    assert "control 10,400 (52.0%) vs expected 50.0%; candidate 9,600 (48.0%) vs expected 50.0%" in verdict.message
    assert "p=1.5e-08" in verdict.message


def test_alarm_on_a_simulated_52_48_split() -> None:
    rng = random.Random(7)
    control = sum(rng.random() < 0.52 for _ in range(20_000))
    verdict = SrmCheck().check({"control": control, "candidate": 20_000 - control}, {"control": 1, "candidate": 1})
    assert verdict.mismatch


def test_no_alarm_below_the_minimum_count() -> None:
    verdict = SrmCheck(min_total=100).check({"control": 90, "candidate": 9}, {"control": 0.5, "candidate": 0.5})
    assert not verdict.mismatch
    assert verdict.p_value < 1e-10  # the numbers are lopsided; there are just too few of them to act on
    assert verdict.message.startswith("too few requests to judge (99 < 100)")


def test_an_arm_outside_the_design_is_a_mismatch() -> None:
    verdict = SrmCheck().check({"control": 500, "candidate": 500, "stray": 3}, {"control": 0.5, "candidate": 0.5})
    assert verdict.mismatch
    assert "stray 3 (0.3%) vs expected 0.0%" in verdict.message


def test_healthy_split_message() -> None:
    verdict = SrmCheck().check({"control": 5_030, "candidate": 4_970}, {"control": 0.5, "candidate": 0.5})
    assert not verdict.mismatch
    assert verdict.message.startswith("sample ratio ok: control 5,030 (50.3%)")


def test_false_alarm_rate_on_correct_ratios() -> None:
    rng = random.Random(2024)
    check = SrmCheck()
    runs, n = 2_000, 2_000
    alarms = 0
    p_values = []
    for _ in range(runs):
        control = rng.getrandbits(n).bit_count()  # n fair coin flips at once
        verdict = check.check({"control": control, "candidate": n - control}, {"control": 0.5, "candidate": 0.5})
        alarms += verdict.mismatch
        p_values.append(verdict.p_value)
    assert alarms / runs < 0.005
    # Calibration: at a conventional 5% the test should reject about 5% of healthy runs.
    assert 0.035 < sum(p < 0.05 for p in p_values) / runs < 0.065


def test_false_alarm_rate_on_correct_ratios_with_three_arms() -> None:
    rng = random.Random(99)
    check = SrmCheck()
    design = {"control": 0.8, "a": 0.1, "b": 0.1}
    alarms = 0
    for _ in range(300):
        counts = {"control": 0, "a": 0, "b": 0}
        for _ in range(1_000):
            u = rng.random()
            counts["control" if u < 0.8 else "a" if u < 0.9 else "b"] += 1
        alarms += check.check(counts, design).mismatch
    assert alarms <= 1


def test_check_validates_its_settings() -> None:
    with pytest.raises(ValueError):
        SrmCheck(alpha=0.0)
    with pytest.raises(ValueError):
        SrmCheck(min_total=-1)
