"""Experiment arm assignment: sticky, weighted, ramped only forward, bounded in time, independent across names."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest

from gateway.experiments.assign import Arm, Assigner, Ramp, StickyBy, key_units, parse_sticky_by, sticky_key
from gateway.experiments.srm import chi_square_sf, goodness_of_fit

ALPHA = 0.001
KEYS = [f"user-{i}" for i in range(20_000)]


def fifty_fifty(name: str = "exp", **kwargs: object) -> Assigner:
    return Assigner(name, [Arm("control", 1), Arm("candidate", 1)], **kwargs)  # type: ignore[arg-type]


def fit_p(assigner: Assigner, keys: list[str], now: float = 0.0) -> float:
    counts = Counter(assigner.assign(key, now) for key in keys)
    shares = assigner.shares(now)
    _, p = goodness_of_fit([counts[arm] for arm in shares], list(shares.values()))
    return p


def test_same_key_same_arm_across_fresh_instances() -> None:
    first = [fifty_fifty().assign(key, 0.0) for key in KEYS[:2_000]]
    again = [fifty_fifty().assign(key, 0.0) for key in KEYS[:2_000]]
    assert first == again
    assert set(first) == {"control", "candidate"}


def test_same_arms_in_another_process_with_another_hash_seed() -> None:
    script = (
        "from gateway.experiments.assign import Arm, Assigner\n"
        "a = Assigner('exp', [Arm('control', 1), Arm('candidate', 1)])\n"
        "print(','.join(a.assign(f'user-{i}', 0.0) for i in range(300)))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().split(",") == [fifty_fifty().assign(f"user-{i}", 0.0) for i in range(300)]


def test_hash_scheme_is_pinned() -> None:
    # Changing how keys hash would reshuffle every running experiment; this catches it.
    side, which = key_units("exp", "alice")
    assert (round(side, 12), round(which, 12)) == (0.660073892164, 0.128336690613)


@pytest.mark.parametrize("weights", [(50, 50), (80, 10, 10), (1, 2, 3, 4)])
def test_weighted_assignment_fits_the_design(weights: tuple[int, ...]) -> None:
    arms = [Arm(f"arm{i}", w) for i, w in enumerate(weights)]
    assigner = Assigner("weights", arms)
    assert assigner.shares(0.0) == pytest.approx({arm.name: arm.weight / sum(weights) for arm in arms})
    assert fit_p(assigner, KEYS) > ALPHA


def test_zero_weight_arm_gets_nothing() -> None:
    assigner = Assigner("z", [Arm("control", 1), Arm("off", 0), Arm("on", 1)])
    assert Counter(assigner.assign(key, 0.0) for key in KEYS[:2_000]).keys() == {"control", "on"}


def ramp_assigner() -> Assigner:
    ramp = Ramp(start_at=100.0, duration_s=1_000.0, from_share=0.0, to_share=0.6)
    return Assigner("ramped", [Arm("control", 1), Arm("a", 1), Arm("b", 2)], ramp=ramp)


def test_ramp_share_grows_linearly_and_holds() -> None:
    assigner = ramp_assigner()
    assert assigner.candidate_share(50.0) == 0.0
    assert assigner.candidate_share(600.0) == pytest.approx(0.3)
    assert assigner.candidate_share(2_000.0) == pytest.approx(0.6)
    assert assigner.shares(600.0) == pytest.approx({"control": 0.7, "a": 0.1, "b": 0.2})
    assert fit_p(assigner, KEYS, 600.0) > ALPHA


def test_ramp_to_the_designed_share_by_default() -> None:
    assigner = Assigner("r", [Arm("control", 1), Arm("candidate", 3)], ramp=Ramp(start_at=0.0, duration_s=10.0))
    assert assigner.candidate_share(5.0) == pytest.approx(0.375)
    assert assigner.candidate_share(10.0) == pytest.approx(0.75)


def test_ramp_only_moves_keys_from_control_to_one_candidate() -> None:
    assigner = ramp_assigner()
    times = [0.0, *(100.0 + 50.0 * step for step in range(21)), 5_000.0]
    moved = 0
    for key in KEYS[:3_000]:
        arms = [assigner.assign(key, now) for now in times]
        first_candidate = next((i for i, arm in enumerate(arms) if arm != "control"), len(arms))
        assert set(arms[:first_candidate]) <= {"control"}, key
        assert len(set(arms[first_candidate:])) <= 1, (key, arms)  # never back, never sideways
        moved += first_candidate < len(arms)
    assert 0.55 < moved / 3_000 < 0.65


def test_start_and_stop_bound_the_experiment() -> None:
    assigner = fifty_fifty(start=100.0, stop=200.0)
    assert assigner.assign("alice", 99.9) is None
    assert assigner.assign("alice", 100.0) is not None
    assert assigner.assign("alice", 199.9) is not None
    assert assigner.assign("alice", 200.0) is None
    assert not assigner.active(200.0)


def test_injected_clock_is_used_when_no_time_is_given() -> None:
    now = [50.0]
    assigner = fifty_fifty(start=100.0, clock=lambda: now[0])
    assert assigner.assign("alice") is None
    now[0] = 150.0
    assert assigner.assign("alice") == assigner.assign("alice", 150.0)


def draws(values: list[float]) -> Iterator[float]:
    yield from values


def test_missing_key_draws_from_the_rng() -> None:
    values = draws([0.1, 0.9, 0.95, 0.2, 0.95, 0.8])
    assigner = Assigner("r", [Arm("control", 2), Arm("a", 1), Arm("b", 1)], rng=lambda: next(values))
    # (side, which): side below 0.5 is control; above it `which` picks a (below 0.5) or b.
    assert [assigner.assign(None, 0.0) for _ in range(3)] == ["control", "a", "b"]


def test_missing_keys_follow_the_weights() -> None:
    assigner = Assigner("r", [Arm("control", 8), Arm("a", 1), Arm("b", 1)], rng=random.Random(5).random)
    counts = Counter(assigner.assign(None, 0.0) for _ in range(20_000))
    _, p = goodness_of_fit([counts["control"], counts["a"], counts["b"]], [0.8, 0.1, 0.1])
    assert p > ALPHA


def test_experiments_with_different_names_assign_independently() -> None:
    one, two = fifty_fifty("exp-one"), fifty_fifty("exp-two")
    table = Counter((one.assign(key, 0.0), two.assign(key, 0.0)) for key in KEYS)
    rows, cols = ("control", "candidate"), ("control", "candidate")
    n = len(KEYS)
    statistic = 0.0
    for r in rows:
        for c in cols:
            expected = sum(table[r, x] for x in cols) * sum(table[x, c] for x in rows) / n
            statistic += (table[r, c] - expected) ** 2 / expected
    assert chi_square_sf(statistic, 1) > ALPHA
    # And the underlying uniforms are uncorrelated (|r| < 0.03 is over 4 standard errors at n=20,000).
    xs = [key_units("exp-one", key)[0] for key in KEYS]
    ys = [key_units("exp-two", key)[0] for key in KEYS]
    mx, my = sum(xs) / n, sum(ys) / n
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    r = cov / (sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys)) ** 0.5
    assert abs(r) < 0.03


@pytest.mark.parametrize(
    ("arms", "kwargs", "match"),
    [
        ([Arm("control", 1)], {}, "at least one candidate"),
        ([Arm("x", 1), Arm("x", 1)], {}, "distinct"),
        ([Arm("c", 1), Arm("x", -1)], {}, "non-negative"),
        ([Arm("c", 0), Arm("x", 0)], {}, "all be zero"),
        ([Arm("c", 1), Arm("x", 1)], {"start": 10.0, "stop": 10.0}, "stop"),
        ([Arm("c", 1), Arm("x", 1)], {"ramp": Ramp(0.0, 10.0, from_share=0.6)}, "only grow"),
        ([Arm("c", 1), Arm("x", 1)], {"ramp": Ramp(0.0, 10.0, to_share=1.5)}, r"\[0, 1\]"),
        ([Arm("c", 1), Arm("x", 0)], {"ramp": Ramp(0.0, 10.0, to_share=0.5)}, "positive weight"),
    ],
)
def test_invalid_designs_are_refused(arms: list[Arm], kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Assigner("bad", arms, **kwargs)  # type: ignore[arg-type]


def test_sticky_key_user_header_and_api_key() -> None:
    body = {"user": "u-42", "model": "m"}
    headers = [(b"x-session", b"s-1"), (b"X-Cohort", b" beta ")]
    assert sticky_key("user", body, headers, "key-abc") == "u-42"
    assert sticky_key("user", {"user": ""}, headers, "key-abc") is None
    assert sticky_key("user", {"user": 7}, headers, "key-abc") is None
    assert sticky_key("header:X-Session", body, headers, "key-abc") == "s-1"
    assert sticky_key("header:x-cohort", body, dict(headers), "key-abc") == "beta"
    assert sticky_key("header:x-missing", body, headers, "key-abc") is None
    assert sticky_key("api_key", body, headers, "key-abc") == "key-abc"
    assert sticky_key("api_key", body, headers, "anonymous") is None
    assert sticky_key("api_key", body, headers, None) is None
    assert sticky_key(StickyBy("header", b"x-session"), body, headers, None) == "s-1"


@pytest.mark.parametrize("bad", ["", "users", "header", "header:", "header: ", "cookie:x", "API_KEY"])
def test_sticky_by_is_validated(bad: str) -> None:
    with pytest.raises(ValueError, match=r"use 'user', 'api_key' or 'header:<name>'"):
        parse_sticky_by(bad)

