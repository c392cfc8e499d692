"""The numbers of an experiment report: each arm's summaries and each candidate's comparisons.

Pure functions over `ArmTotals`; `gateway.experiments.report` assembles them into the report.
Everything returned here is JSON-ready: a NaN or an infinity (an empty arm, an unbounded interval)
becomes None, because neither JSON nor the CLI's table has a way to say "not a number".
"""

from __future__ import annotations

import math
from typing import Any

from gateway.experiments.arm_totals import METRICS, ArmTotals
from gateway.experiments.sequential import ArmSummary, Comparison, compare, mean_interval, quantile_interval
from gateway.experiments.sketch import LatencySketch

LATENCY_METRICS: tuple[str, ...] = METRICS
# Every metric a candidate is compared with control on, in report order.
COMPARED_METRICS: tuple[str, ...] = ("e2e", "ttft", "tpot", "error_rate", "cost", "score")
# How a positive / negative difference (candidate - control) reads in a sentence.
METRIC_WORDS: dict[str, tuple[str, str]] = {
    "e2e": ("slower", "faster"), "ttft": ("slower", "faster"), "tpot": ("slower", "faster"),
    "error_rate": ("higher", "lower"), "cost": ("more expensive", "cheaper"), "score": ("higher", "lower"),
}
# A plot needs the shape, not 2048 buckets: the distribution is merged down to at most this many points.
DISTRIBUTION_POINTS = 60
_QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of `metric` is the better one (everything but the feedback score)."""
    return metric != "score"


def finite(x: float | None) -> float | None:
    """`x`, or None when it is missing, NaN or infinite."""
    return x if x is not None and math.isfinite(x) else None


def finite_pair(pair: tuple[float, float]) -> list[float | None]:
    """An interval as a JSON pair; an infinite or NaN end (unbounded, unknown) becomes None."""
    return [finite(pair[0]), finite(pair[1])]


def _summary_of_sums(n: int, total: float, total_sq: float) -> ArmSummary:
    """Mean and sample variance from a count, a sum and a sum of squares (what the counters keep)."""
    if n == 0:
        return ArmSummary(0, math.nan, math.nan)
    mean = total / n
    variance = max(total_sq - total * total / n, 0.0) / (n - 1) if n > 1 else math.nan
    return ArmSummary(n, mean, variance)


def metric_summary(totals: ArmTotals, metric: str) -> ArmSummary:
    """What `compare` needs of one arm on `metric`.

    Latencies come from the sketches (successful requests only); the error rate is the mean of a
    0/1 variable per served request, whose sample variance is p(1 - p) n / (n - 1); cost is per
    served request; the score is per scored piece of feedback.
    """
    if metric in LATENCY_METRICS:
        return ArmSummary.of_sketch(totals.sketches[metric])
    if metric == "error_rate":
        n = totals.requests
        if n == 0:
            return ArmSummary(0, math.nan, math.nan)
        p = totals.errors / n
        return ArmSummary(n, p, p * (1.0 - p) * n / (n - 1) if n > 1 else math.nan)
    if metric == "cost":
        return _summary_of_sums(totals.requests, totals.cost_usd, totals.cost_sumsq)
    if metric == "score":
        return _summary_of_sums(totals.score_count, totals.score_sum, totals.score_sumsq)
    raise ValueError(f"unknown metric {metric!r} (one of {', '.join(COMPARED_METRICS)})")


def compare_metric(control: ArmTotals, candidate: ArmTotals, metric: str, *, alpha: float,
                   target_n: int) -> tuple[Comparison, ArmSummary, ArmSummary]:
    """The always-valid comparison of candidate with control on `metric`, and the two summaries."""
    ctrl, cand = metric_summary(control, metric), metric_summary(candidate, metric)
    result = compare(ctrl, cand, alpha=alpha, lower_is_better=lower_is_better(metric), target_n=target_n,
                     words=METRIC_WORDS[metric])
    return result, ctrl, cand


def comparison_dict(result: Comparison, control: ArmSummary, candidate: ArmSummary, *, metric: str,
                    control_arm: str, candidate_arm: str) -> dict[str, Any]:
    """One comparison as JSON; `winner` is the winning arm's name (None while not conclusive)."""
    winner = None if result.winner is None else (candidate_arm if result.winner == "candidate" else control_arm)
    return {
        "difference": finite(result.difference),
        "relative": finite(result.relative),
        "interval": finite_pair(result.interval),
        "relative_interval": finite_pair(result.relative_interval),
        "conclusive": result.conclusive,
        "winner": winner,
        "p_value": finite(result.p_value),
        "n_control": control.n,
        "n_candidate": candidate.n,
        "control_mean": finite(control.mean),
        "candidate_mean": finite(candidate.mean),
        "summary": describe(result, control, candidate, metric=metric, alpha=result.alpha, name=candidate_arm),
    }


def _percent(x: float) -> str:
    return f"{x:+.1%}"


def describe(result: Comparison, control: ArmSummary, candidate: ArmSummary, *, metric: str, alpha: float,
             name: str = "candidate") -> str:
    """A sentence on one comparison, e.g. "candidate is 21.3% slower on e2e (95% CS +15.0% .. +27.9%),
    conclusive"; with too few samples, "not conclusive yet (n=40/38)" (candidate/control)."""
    counts = f"n={candidate.n}/{control.n}"
    lo, hi = result.interval
    if not (math.isfinite(lo) and math.isfinite(hi)) or not math.isfinite(result.difference):
        return f"{name} on {metric}: not conclusive yet ({counts})"
    level = f"{1.0 - alpha:.0%} CS"
    positive, negative = METRIC_WORDS[metric]
    word = positive if result.difference >= 0.0 else negative
    rel_lo, rel_hi = result.relative_interval
    if math.isfinite(result.relative) and math.isfinite(rel_lo) and math.isfinite(rel_hi):
        size = f"{abs(result.relative):.1%} {word}"
        interval = f"{level} {_percent(rel_lo)} .. {_percent(rel_hi)}"
    else:
        # Control's mean is 0 (no errors, free backend): a relative change means nothing, say it absolutely.
        size = f"{abs(result.difference):.4g} {word}"
        interval = f"{level} {lo:+.4g} .. {hi:+.4g}"
    ending = "conclusive" if result.conclusive else f"not conclusive yet ({counts})"
    return f"{name} is {size} on {metric} ({interval}), {ending}"


# -- one arm ---------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float) -> list[float | None]:
    """Wilson score interval of a proportion: unlike p +/- z sqrt(p(1-p)/n) it stays inside [0, 1]
    and is not degenerate at 0 errors, which is the usual state of a healthy arm."""
    if n == 0:
        return [None, None]
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    radius = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denominator
    return [max(0.0, centre - radius), min(1.0, centre + radius)]


def latency_summary(sketch: LatencySketch, confidence: float) -> dict[str, Any]:
    """Count, mean with interval, p50/p90/p99 with order-statistic intervals, min and max, in seconds."""
    summary: dict[str, Any] = {
        "n": sketch.count,
        "mean": finite(sketch.mean),
        "mean_ci": finite_pair(mean_interval(ArmSummary.of_sketch(sketch), confidence)),
    }
    for key, q in _QUANTILES:
        if sketch.count:
            summary[key] = finite(sketch.quantile(q))
            summary[f"{key}_ci"] = finite_pair(quantile_interval(sketch, q, confidence))
        else:
            summary[key], summary[f"{key}_ci"] = None, [None, None]
    summary["min"] = finite(sketch.min) if sketch.count else None
    summary["max"] = finite(sketch.max) if sketch.count else None
    return summary


def distribution(sketch: LatencySketch, points: int = DISTRIBUTION_POINTS) -> list[list[float]]:
    """The sketch's histogram as [[value_s, count], ...], merged into at most `points` equal log-width
    groups (empty groups included, so a step plot shows the gaps); values at the 0 threshold come first."""
    buckets = sketch.bucket_counts()
    out: list[list[float]] = [[0.0, sketch.zero_count]] if sketch.zero_count else []
    if not buckets:
        return out
    low, high = min(buckets), max(buckets)
    width = max(1, math.ceil((high - low + 1) / points))
    groups = [0] * ((high - low) // width + 1)
    for index, count in buckets.items():
        groups[(index - low) // width] += count
    for g, count in enumerate(groups):
        # The group's geometric centre: the bucket value scales by gamma per index.
        value = sketch.value_of(low + g * width) * sketch.gamma ** ((width - 1) / 2.0)
        out.append([value, count])
    return out


def arm_summary(totals: ArmTotals, *, target: str | None, expected_share: float | None,
                total_assigned: int, confidence: float) -> dict[str, Any]:
    """Everything the report says about one arm (latencies in seconds, cost in USD)."""
    requests = totals.requests
    scores = metric_summary(totals, "score")
    agreement: dict[str, Any] | None = None
    if totals.agreement_count:
        similarity = _summary_of_sums(totals.agreement_count, totals.similarity_sum, totals.similarity_sumsq)
        agreement = {
            "n": totals.agreement_count,
            "exact_rate": totals.exact_count / totals.agreement_count,
            "exact_rate_ci": wilson_interval(totals.exact_count, totals.agreement_count, confidence),
            "similarity_mean": finite(similarity.mean),
            "similarity_ci": finite_pair(mean_interval(similarity, confidence)),
        }
    return {
        "target": target,
        "expected_share": expected_share,
        "assigned": totals.assigned,
        "assigned_during_ramp": totals.ramp_assigned,
        "observed_share": totals.assigned / total_assigned if total_assigned else None,
        "requests": requests,
        "cache_hits": totals.cache_hits,
        "skipped": totals.skipped,
        "errors": totals.errors,
        "error_rate": totals.errors / requests if requests else None,
        "error_rate_ci": wilson_interval(totals.errors, requests, confidence),
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cost_usd": totals.cost_usd,
        "cost_per_request": totals.cost_usd / requests if requests else None,
        "latency": {m: latency_summary(totals.sketches[m], confidence) for m in LATENCY_METRICS},
        "feedback": {
            "n": totals.feedback_count,
            "scored": totals.score_count,
            "score_mean": finite(scores.mean),
            "score_ci": finite_pair(mean_interval(scores, confidence)),
            "labels": dict(totals.labels),
        },
        "agreement": agreement,
        "distribution": {m: distribution(totals.sketches[m]) for m in LATENCY_METRICS},
    }
