"""The experiment report's numbers: comparisons, SRM, shadow agreement, history and auto-stop.

Arm totals come from seeded simulated requests, so every assertion is deterministic.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import msgspec
import pytest

from gateway.experiments.arm_totals import ArmObservation, ArmTotals
from gateway.experiments.report import auto_stop_decision, build_report, estimate_point
from gateway.experiments.report_metrics import DISTRIBUTION_POINTS
from gateway.experiments.settings import ExperimentConfig
from gateway.experiments.timeline import StopState

NOW = 1_790_000_000.0


def simulate(arm: str, n: int, *, seed: int, scale: float = 1.0, error_rate: float = 0.0,
             cost: float = 0.001, score: tuple[float, float] | None = None,
             agreement: tuple[float, float] | None = None, assigned: int | None = None) -> ArmTotals:
    """An arm's totals after `n` requests with lognormal latencies (median `scale` seconds).

    `score` = (mean, sd) of a feedback score per request; `agreement` = (exact probability,
    similarity mean) of a shadow arm's answers.
    """
    rng = random.Random(seed)
    totals = ArmTotals()
    totals.assigned = n if assigned is None else assigned
    for _ in range(n):
        e2e = scale * rng.lognormvariate(0.0, 0.5)
        exact = similarity = None
        if agreement is not None:
            exact = rng.random() < agreement[0]
            similarity = min(1.0, max(0.0, rng.gauss(agreement[1], 0.1)))
        totals.add(ArmObservation(
            experiment="exp", arm=arm, ok=rng.random() >= error_rate, ttft_s=0.2 * e2e, tpot_s=0.01 * e2e,
            e2e_s=e2e, input_tokens=100, output_tokens=rng.randint(50, 150), cost_usd=cost * rng.uniform(0.5, 1.5),
            exact=exact, similarity=similarity))
        if score is not None:
            totals.add_feedback(rng.gauss(*score), rng.choice(["good", "bad"]))
    return totals


def live_report(totals: dict[str, ArmTotals], *, metric: str = "e2e", shares: dict[str, float] | None = None,
                stopped: StopState | None = None, **kwargs: Any) -> dict[str, Any]:
    return build_report(
        name="exp", kind="live", route="chat", metric=metric, alpha=0.05, target_n=1000, control="control",
        targets={"control": "backend big", "candidate": "backend small"},
        shares={"control": 0.5, "candidate": 0.5} if shares is None else shares, active=True, stopped=stopped,
        totals=totals, history=kwargs.pop("history", []), now=NOW, **kwargs)


def assert_json_clean(report: dict[str, Any]) -> None:
    """Encodes with msgspec, and holds no NaN/Infinity (which strict JSON parsers refuse)."""
    encoded = msgspec.json.encode(report)

    def refuse(constant: str) -> None:
        raise AssertionError(f"report JSON contains {constant}")

    json.loads(encoded, parse_constant=refuse)


@pytest.fixture(scope="module")
def slower() -> dict[str, ArmTotals]:
    """A candidate 20% slower on every latency."""
    return {"control": simulate("control", 3000, seed=1), "candidate": simulate("candidate", 3000, seed=2, scale=1.2)}


def test_slower_candidate_is_conclusive_with_control_winning(slower: dict[str, ArmTotals]) -> None:
    report = live_report(slower)
    e2e = report["comparisons"]["candidate"]["e2e"]
    assert e2e["conclusive"] is True
    assert e2e["winner"] == "control"
    assert e2e["difference"] > 0
    assert e2e["relative"] == pytest.approx(0.20, abs=0.05)
    low, high = e2e["relative_interval"]
    assert low < e2e["relative"] < high and low > 0
    assert e2e["p_value"] < 0.05
    assert "slower" in report["verdict"] and "candidate" in report["verdict"]
    assert "conclusive" in report["verdict"] and "not conclusive" not in report["verdict"]
    assert_json_clean(report)


def test_report_shape(slower: dict[str, ArmTotals]) -> None:
    report = live_report(slower)
    for key in ("name", "kind", "route", "metric", "alpha", "active", "stopped", "control", "generated_at", "arms",
                "comparisons", "srm", "verdict", "history"):
        assert key in report
    assert list(report["arms"]) == ["control", "candidate"]
    arm = report["arms"]["candidate"]
    assert arm["target"] == "backend small"
    assert arm["expected_share"] == 0.5 and arm["observed_share"] == 0.5
    assert arm["requests"] == 3000 and arm["assigned"] == 3000
    latency = arm["latency"]["e2e"]
    assert latency["n"] == 3000
    assert latency["mean_ci"][0] < latency["mean"] < latency["mean_ci"][1]
    assert latency["p50_ci"][0] <= latency["p50"] <= latency["p50_ci"][1]
    assert latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert arm["cost_per_request"] == pytest.approx(arm["cost_usd"] / 3000)
    for metric in ("e2e", "ttft", "tpot"):
        points = arm["distribution"][metric]
        assert 0 < len(points) <= DISTRIBUTION_POINTS
        assert sum(count for _, count in points) == 3000
        assert [v for v, _ in points] == sorted(v for v, _ in points)
    assert set(report["comparisons"]["candidate"]) == {"e2e", "ttft", "tpot", "error_rate", "cost", "score"}


def test_a_a_is_not_conclusive() -> None:
    totals = {"control": simulate("control", 3000, seed=3), "candidate": simulate("candidate", 3000, seed=4)}
    report = live_report(totals)
    for metric in ("e2e", "ttft", "tpot", "cost"):
        comparison = report["comparisons"]["candidate"][metric]
        assert comparison["conclusive"] is False and comparison["winner"] is None
        low, high = comparison["interval"]
        assert low < 0 < high
    assert "not conclusive yet" in report["verdict"]
    assert report["srm"]["alarm"] is False


def test_srm_alarm_on_a_55_45_split_of_a_50_50_design() -> None:
    totals = {"control": simulate("control", 300, seed=5, assigned=1100),
              "candidate": simulate("candidate", 300, seed=6, assigned=900)}
    report = live_report(totals)
    srm = report["srm"]
    assert srm["alarm"] is True
    assert srm["p_value"] < 0.0005
    assert srm["statistic"] == pytest.approx(20.0)
    assert srm["observed"] == {"control": 1100, "candidate": 900}
    assert srm["expected"] == {"control": 0.5, "candidate": 0.5}
    assert report["verdict"].startswith("SRM ALARM")
    assert report["arms"]["control"]["observed_share"] == pytest.approx(0.55)


def test_srm_quiet_on_a_fair_split() -> None:
    totals = {"control": simulate("control", 300, seed=5, assigned=1012),
              "candidate": simulate("candidate", 300, seed=6, assigned=988)}
    report = live_report(totals)
    assert report["srm"]["alarm"] is False
    assert report["srm"]["p_value"] > 0.05
    assert "SRM" not in report["verdict"]


def test_srm_uses_the_expected_shares() -> None:
    # 90/10 by design: a 1800/200 split is exactly right, a 50/50 one is not.
    shares = {"control": 9.0, "candidate": 1.0}
    right = {"control": simulate("control", 10, seed=1, assigned=1800),
             "candidate": simulate("candidate", 10, seed=2, assigned=200)}
    assert live_report(right, shares=shares)["srm"]["alarm"] is False
    assert live_report(right, shares=shares)["arms"]["control"]["expected_share"] == pytest.approx(0.9)
    even = {"control": simulate("control", 10, seed=1, assigned=1000),
            "candidate": simulate("candidate", 10, seed=2, assigned=1000)}
    assert live_report(even, shares=shares)["srm"]["alarm"] is True


def test_error_rate_comparison_uses_the_counts() -> None:
    totals = {"control": simulate("control", 2000, seed=7, error_rate=0.02),
              "candidate": simulate("candidate", 2000, seed=8, error_rate=0.10)}
    report = live_report(totals, metric="error_rate")
    comparison = report["comparisons"]["candidate"]["error_rate"]
    control, candidate = report["arms"]["control"], report["arms"]["candidate"]
    assert comparison["n_control"] == control["requests"] == 2000
    assert comparison["control_mean"] == pytest.approx(control["errors"] / 2000)
    assert comparison["candidate_mean"] == pytest.approx(candidate["errors"] / 2000)
    assert comparison["difference"] == pytest.approx((candidate["errors"] - control["errors"]) / 2000)
    assert comparison["conclusive"] is True and comparison["winner"] == "control"
    low, high = candidate["error_rate_ci"]
    assert low < candidate["error_rate"] < high
    assert "error_rate" in report["verdict"] and "higher" in report["verdict"]
    # Latency sketches hold successful requests only.
    assert candidate["latency"]["e2e"]["n"] == 2000 - candidate["errors"]


def test_no_errors_on_either_side_is_not_conclusive() -> None:
    totals = {"control": simulate("control", 500, seed=7), "candidate": simulate("candidate", 500, seed=8)}
    comparison = live_report(totals)["comparisons"]["candidate"]["error_rate"]
    assert comparison["conclusive"] is False
    assert comparison["relative"] is None  # relative to a zero error rate means nothing


def test_score_comparison_uses_feedback_and_higher_is_better() -> None:
    totals = {"control": simulate("control", 1500, seed=9, score=(0.6, 0.2)),
              "candidate": simulate("candidate", 1500, seed=10, score=(0.7, 0.2))}
    report = live_report(totals, metric="score")
    comparison = report["comparisons"]["candidate"]["score"]
    assert comparison["n_candidate"] == report["arms"]["candidate"]["feedback"]["scored"] == 1500
    assert comparison["difference"] == pytest.approx(0.1, abs=0.03)
    assert comparison["conclusive"] is True and comparison["winner"] == "candidate"
    feedback = report["arms"]["candidate"]["feedback"]
    assert feedback["n"] == 1500 and sum(feedback["labels"].values()) == 1500
    assert feedback["score_ci"][0] < feedback["score_mean"] < feedback["score_ci"][1]
    assert "candidate wins" in report["verdict"]


def test_shadow_report_has_agreement_and_no_srm() -> None:
    totals = {"control": simulate("control", 400, seed=11),
              "candidate": simulate("candidate", 400, seed=12, agreement=(0.7, 0.8), assigned=0)}
    report = build_report(
        name="shadow", kind="shadow", route="chat", metric="e2e", alpha=0.05, target_n=1000, control="control",
        targets={"control": "route chat", "candidate": "backend small"}, shares={}, active=True, stopped=None,
        totals=totals, history=[], now=NOW)
    assert report["kind"] == "shadow" and report["srm"] is None
    agreement = report["arms"]["candidate"]["agreement"]
    assert agreement["n"] == 400
    assert agreement["exact_rate"] == pytest.approx(0.7, abs=0.07)
    assert agreement["exact_rate_ci"][0] < agreement["exact_rate"] < agreement["exact_rate_ci"][1]
    assert agreement["similarity_mean"] == pytest.approx(0.8, abs=0.03)
    assert report["arms"]["control"]["agreement"] is None
    assert report["arms"]["candidate"]["expected_share"] is None
    assert "agreement" not in report["comparisons"]["candidate"]
    assert_json_clean(report)


def test_empty_totals_give_null_intervals() -> None:
    report = live_report({})
    assert list(report["arms"]) == ["control", "candidate"]
    arm = report["arms"]["candidate"]
    assert arm["requests"] == 0 and arm["observed_share"] is None and arm["error_rate"] is None
    assert arm["latency"]["e2e"]["mean"] is None and arm["latency"]["e2e"]["p99_ci"] == [None, None]
    assert arm["distribution"]["e2e"] == []
    for comparison in report["comparisons"]["candidate"].values():
        assert comparison["interval"] == [None, None]
        assert comparison["conclusive"] is False and comparison["winner"] is None
    assert "not conclusive yet (n=0/0)" in report["verdict"]
    assert report["srm"]["alarm"] is False
    assert_json_clean(report)


def test_a_few_samples_stay_unbounded() -> None:
    totals = {"control": simulate("control", 1, seed=1), "candidate": simulate("candidate", 5, seed=2)}
    comparison = live_report(totals)["comparisons"]["candidate"]["e2e"]
    assert comparison["interval"] == [None, None] and comparison["conclusive"] is False
    assert comparison["difference"] is not None


def test_arm_outside_targets_is_still_reported() -> None:
    totals = {"control": simulate("control", 50, seed=1), "old": simulate("old", 50, seed=2)}
    report = live_report(totals)
    assert list(report["arms"]) == ["control", "candidate", "old"]
    assert report["arms"]["old"]["target"] is None and "old" in report["comparisons"]


def test_stopped_report_says_so_first() -> None:
    stop = StopState(at=NOW, reason="every candidate is conclusive", serve="control")
    report = live_report({}, stopped=stop)
    assert report["stopped"] == {"at": NOW, "reason": "every candidate is conclusive", "serve": "control"}
    assert report["verdict"].startswith("Stopped at") and "serving control" in report["verdict"]


def test_estimate_point_and_history(slower: dict[str, ArmTotals]) -> None:
    assert estimate_point(metric="e2e", alpha=0.05, target_n=1000, control="control", totals={}, now=NOW) is None
    only_candidate = {"control": ArmTotals(), "candidate": slower["candidate"]}
    assert estimate_point(metric="e2e", alpha=0.05, target_n=1000, control="control", totals=only_candidate,
                          now=NOW) is None
    point = estimate_point(metric="e2e", alpha=0.05, target_n=1000, control="control", totals=slower, now=NOW)
    assert point is not None and point.at == NOW and point.metric == "e2e"
    estimate = point.arms["candidate"]
    assert estimate.n_control == estimate.n_candidate == 3000
    assert estimate.low is not None and estimate.high is not None
    assert 0 < estimate.low < estimate.difference < estimate.high
    report = live_report(slower, history=[point])
    assert report["history"][0]["arms"]["candidate"]["difference"] == pytest.approx(estimate.difference)
    assert_json_clean(report)


def test_estimate_point_unbounded_while_few_samples() -> None:
    totals = {"control": simulate("control", 1, seed=1), "candidate": simulate("candidate", 1, seed=2)}
    point = estimate_point(metric="e2e", alpha=0.05, target_n=1000, control="control", totals=totals, now=NOW)
    assert point is not None
    assert point.arms["candidate"].low is None and point.arms["candidate"].high is None
    assert math.isfinite(point.arms["candidate"].difference)


def _config(**kwargs: Any) -> ExperimentConfig:
    arms = kwargs.pop("arms", {"control": "big", "candidate": "small"})
    kwargs.setdefault("auto_stop", True)
    return ExperimentConfig(name="exp", arms=arms, min_samples=200, **kwargs)


def test_auto_stop_waits_for_min_samples() -> None:
    # Hugely different, but below min_samples in both arms.
    totals = {"control": simulate("control", 150, seed=1), "candidate": simulate("candidate", 150, seed=2, scale=3)}
    assert auto_stop_decision(_config(), totals, NOW) is None


def test_auto_stop_off_or_not_conclusive(slower: dict[str, ArmTotals]) -> None:
    assert auto_stop_decision(_config(auto_stop=False), slower, NOW) is None
    same = {"control": simulate("control", 1000, seed=3), "candidate": simulate("candidate", 1000, seed=4)}
    assert auto_stop_decision(_config(), same, NOW) is None
    assert auto_stop_decision(_config(), {}, NOW) is None


def test_auto_stop_serves_control(slower: dict[str, ArmTotals]) -> None:
    stop = auto_stop_decision(_config(on_stop="control"), slower, NOW)
    assert stop is not None
    assert stop.at == NOW and stop.serve == "control"
    assert "candidate" in stop.reason and "slower" in stop.reason and "n=3000/3000" in stop.reason


def test_auto_stop_serves_the_winner() -> None:
    faster = {"control": simulate("control", 1000, seed=1), "candidate": simulate("candidate", 1000, seed=2, scale=0.7)}
    stop = auto_stop_decision(_config(on_stop="winner"), faster, NOW)
    assert stop is not None and stop.serve == "candidate"
    # A losing candidate under on_stop: winner hands back to control.
    slow = {"control": simulate("control", 1000, seed=1), "candidate": simulate("candidate", 1000, seed=2, scale=1.4)}
    stop = auto_stop_decision(_config(on_stop="winner"), slow, NOW)
    assert stop is not None and stop.serve == "control"


def test_auto_stop_picks_the_best_winner_and_skips_zero_weight_arms() -> None:
    arms = {"control": "big", "a": "small", "b": "tiny", "off": "other"}
    totals = {"control": simulate("control", 1000, seed=1), "a": simulate("a", 1000, seed=2, scale=0.8),
              "b": simulate("b", 1000, seed=3, scale=0.6), "off": simulate("off", 10, seed=4)}
    config = _config(arms=arms, weights={"control": 1, "a": 1, "b": 1, "off": 0}, on_stop="winner")
    stop = auto_stop_decision(config, totals, NOW)
    assert stop is not None and stop.serve == "b"
    # Score: higher is better, so the best winner has the highest mean.
    scored = {"control": simulate("control", 1000, seed=1, score=(0.5, 0.2)),
              "a": simulate("a", 1000, seed=2, score=(0.7, 0.2)), "b": simulate("b", 1000, seed=3, score=(0.6, 0.2))}
    config = _config(arms={"control": "big", "a": "small", "b": "tiny"}, metric="score", on_stop="winner")
    stop = auto_stop_decision(config, scored, NOW)
    assert stop is not None and stop.serve == "a"
