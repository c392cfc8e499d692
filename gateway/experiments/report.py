"""An experiment's report, its running estimate and its auto-stop decision: pure functions, no I/O.

`build_report` is what `GET /admin/experiments/{name}` serves and `gateway experiments report`
prints (`gateway.experiments.report_table`) or plots (`gateway.experiments.plot`). Its dict is
JSON-ready: every NaN or infinity is None. `estimate_point` samples the running estimate for the
report's history; `auto_stop_decision` says when an experiment may stop by itself.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from gateway.experiments.arm_totals import ArmTotals
from gateway.experiments.report_metrics import (
    COMPARED_METRICS,
    arm_summary,
    compare_metric,
    comparison_dict,
    describe,
    finite,
    lower_is_better,
    metric_summary,
)
from gateway.experiments.sequential import compare
from gateway.experiments.settings import ExperimentConfig
from gateway.experiments.srm import SrmCheck, goodness_of_fit
from gateway.experiments.timeline import Estimate, HistoryPoint, StopState


def build_report(
    *,
    name: str,
    kind: Literal["live", "shadow"],
    route: str,
    metric: str,
    alpha: float,
    target_n: int,
    control: str,
    targets: dict[str, str],
    shares: dict[str, float],
    active: bool,
    stopped: StopState | None,
    totals: dict[str, ArmTotals],
    history: list[HistoryPoint],
    now: float,
) -> dict[str, Any]:
    """The whole report of one experiment as a JSON-ready dict (see the module docstring).

    `targets` names every arm's backend or route, control first; an arm without totals is reported
    with zero counts, and an arm with totals but no target (one removed from the config) is still
    shown. `shares` are the arms' expected shares of assignments now, and empty for a shadow
    experiment, which has no designed split and so no sample-ratio check.
    """
    arms = [control, *(a for a in targets if a != control)]
    arms += [a for a in totals if a not in arms]
    data = {arm: totals.get(arm) or ArmTotals() for arm in arms}
    candidates = [a for a in arms if a != control]
    confidence = 1.0 - alpha
    total_assigned = sum(t.assigned for t in data.values())
    share_total = math.fsum(shares.values())

    arm_reports = {
        arm: arm_summary(
            data[arm], target=targets.get(arm), total_assigned=total_assigned, confidence=confidence,
            expected_share=(shares.get(arm, 0.0) / share_total if share_total > 0 else None) if kind == "live"
            else None,
        )
        for arm in arms
    }
    comparisons = {
        cand: {
            m: comparison_dict(*compare_metric(data[control], data[cand], m, alpha=alpha, target_n=target_n),
                               metric=m, control_arm=control, candidate_arm=cand)
            for m in COMPARED_METRICS
        }
        for cand in candidates
    }
    srm = _srm(data, shares) if kind == "live" else None
    report: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "route": route,
        "metric": metric,
        "alpha": alpha,
        "confidence": confidence,
        "target_n": target_n,
        "active": active,
        "stopped": None if stopped is None else msgspec.to_builtins(stopped),
        "control": control,
        "generated_at": now,
        "arms": arm_reports,
        "comparisons": comparisons,
        "srm": srm,
        "verdict": _verdict(metric, control, candidates, comparisons, srm, stopped),
        "history": [msgspec.to_builtins(point) for point in history],
    }
    return _json_ready(report)


def _srm(data: dict[str, ArmTotals], shares: dict[str, float]) -> dict[str, Any] | None:
    """The sample-ratio check on `assigned` against the design; None when there is no design to check.

    During a ramp `shares` is the split *now* while the counts span the whole ramp, so the check is
    only meaningful once the ramp is over; the counts are what they are, the caller knows the ramp.
    """
    if not shares or math.fsum(shares.values()) <= 0:
        return None
    observed = {arm: t.assigned for arm, t in data.items()}
    verdict = SrmCheck().check(observed, shares)
    order = list(shares) + [arm for arm in observed if arm not in shares]
    statistic, _ = goodness_of_fit([observed.get(a, 0) for a in order], [shares.get(a, 0.0) for a in order])
    share_total = math.fsum(shares.values())
    return {
        "statistic": finite(statistic),
        "p_value": verdict.p_value,
        "alarm": verdict.mismatch,
        "message": verdict.message,
        "expected": {arm: share / share_total for arm, share in shares.items()},
        "observed": observed,
    }


def _verdict(metric: str, control: str, candidates: list[str], comparisons: dict[str, dict[str, Any]],
             srm: dict[str, Any] | None, stopped: StopState | None) -> str:
    """The report in one line: the SRM alarm first (it voids the rest), the stop, then each candidate."""
    parts: list[str] = []
    if srm is not None and srm["alarm"]:
        parts.append(f"SRM ALARM, do not trust the comparison: {srm['message']}.")
    if stopped is not None:
        when = datetime.fromtimestamp(stopped.at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        parts.append(f"Stopped at {when} ({stopped.reason}); serving {stopped.serve}.")
    if not candidates:
        parts.append("No candidate arm to compare.")
    for cand in candidates:
        c = comparisons[cand][metric]
        sentence = c["summary"]
        if c["conclusive"] and c["winner"] is not None:
            sentence += f" ({c['winner']} wins)"
        parts.append(sentence + ".")
    return " ".join(parts)


def _json_ready(value: Any) -> Any:
    """`value` with tuples as lists and every NaN/infinity as None: JSON has no word for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def estimate_point(
    *,
    metric: str,
    alpha: float,
    target_n: int,
    control: str,
    totals: dict[str, ArmTotals],
    now: float,
) -> HistoryPoint | None:
    """The running estimate of every candidate against control on `metric` at `now`, for the history.

    None while control has no sample of `metric` (nothing to be relative to); a candidate without
    samples is left out of the point, and with none left the point is None as well.
    """
    if control not in totals:
        return None
    ctrl = metric_summary(totals[control], metric)
    if ctrl.n == 0:
        return None
    estimates: dict[str, Estimate] = {}
    for arm, arm_totals in totals.items():
        if arm == control:
            continue
        cand = metric_summary(arm_totals, metric)
        if cand.n == 0:
            continue
        result = compare(ctrl, cand, alpha=alpha, lower_is_better=lower_is_better(metric), target_n=target_n)
        if not math.isfinite(result.difference):
            continue
        estimates[arm] = Estimate(n_control=ctrl.n, n_candidate=cand.n, difference=result.difference,
                                  low=finite(result.interval[0]), high=finite(result.interval[1]))
    if not estimates:
        return None
    return HistoryPoint(at=now, metric=metric, arms=estimates)


def auto_stop_decision(config: ExperimentConfig, totals: dict[str, ArmTotals], now: float) -> StopState | None:
    """A StopState when the experiment may stop by itself now, else None.

    It may when `auto_stop` is on and every candidate with a positive weight has at least
    `min_samples` samples of `metric` in both arms and a conclusive comparison with control. Then it
    serves the control (`on_stop: control`), or (`on_stop: winner`) the best arm on the metric among
    the candidates that beat control, and control when control beat them all.
    """
    if not config.auto_stop:
        return None
    control = config.control_arm()
    weights = config.arm_weights()
    candidates = [arm for arm, w in weights.items() if arm != control and w > 0]
    if not candidates:
        return None
    ctrl_totals = totals.get(control) or ArmTotals()
    results = []
    for cand in candidates:
        result, ctrl, summary = compare_metric(ctrl_totals, totals.get(cand) or ArmTotals(), config.metric,
                                               alpha=config.alpha, target_n=config.target_n)
        if min(ctrl.n, summary.n) < config.min_samples or not result.conclusive:
            return None
        results.append((cand, result, ctrl, summary))

    serve = control
    if config.on_stop == "winner":
        winners = [(summary.mean, cand) for cand, result, _, summary in results if result.winner == "candidate"]
        if winners:
            pick = min if lower_is_better(config.metric) else max
            serve = pick(winners)[1]
    details = "; ".join(describe(result, ctrl, summary, metric=config.metric, alpha=config.alpha, name=cand)
                        + f" (n={summary.n}/{ctrl.n})" for cand, result, ctrl, summary in results)
    reason = (f"every candidate is conclusive on {config.metric} at alpha {config.alpha:g}: {details}; "
              f"on_stop {config.on_stop} serves {serve}")
    return StopState(at=now, reason=reason, serve=serve)
