"""What one experiment arm did: a request's observation, and the mergeable totals of many.

The totals are counters and `LatencySketch`es, so replicas (and the batches one replica buffers
between writes) merge by plain addition; `gateway.experiments.arm_stats` keeps them in process or
in Redis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec

from gateway.experiments.sketch import DEFAULT_ALPHA, DEFAULT_MAX_BUCKETS, LatencySketch

METRICS = ("ttft", "tpot", "e2e")
# Redis field -> attribute, for the counters (HINCRBY) and the sums (HINCRBYFLOAT) of the counts hash.
_INT_FIELDS = {
    "assigned": "assigned", "ramp_assigned": "ramp_assigned", "cache_hits": "cache_hits", "skipped": "skipped",
    "requests": "requests",
    "errors": "errors", "input_tokens": "input_tokens", "output_tokens": "output_tokens",
    "fb_n": "feedback_count", "fb_scored": "score_count", "agree_n": "agreement_count", "agree_exact": "exact_count",
}
_FLOAT_FIELDS = {
    "cost_usd": "cost_usd", "cost_sumsq": "cost_sumsq", "fb_sum": "score_sum", "fb_sumsq": "score_sumsq",
    "sim_sum": "similarity_sum", "sim_sumsq": "similarity_sumsq",
}


class ArmObservation(msgspec.Struct, frozen=True):
    """One finished request of an experiment arm. Latencies in seconds; None when not measured."""

    experiment: str
    arm: str
    ok: bool
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float
    input_tokens: int
    output_tokens: int
    cost_usd: float
    # A shadow arm's answer against the served one (`gateway.experiments.similarity`), when compared.
    exact: bool | None = None
    similarity: float | None = None


def timed_observation(
    experiment: str, arm: str, ok: bool, *, started: float, first_token_at: float | None, finished_at: float,
    input_tokens: int, output_tokens: int, cost_usd: float, exact: bool | None = None,
    similarity: float | None = None,
) -> ArmObservation:
    """An observation from one request's clock readings: TTFT from the first content token, time per
    output token over the tokens after it (None with fewer than two), end to end."""
    ttft = tpot = None
    if first_token_at is not None:
        ttft = first_token_at - started
        if output_tokens > 1:
            tpot = (finished_at - first_token_at) / (output_tokens - 1)
    return ArmObservation(experiment, arm, ok, ttft_s=ttft, tpot_s=tpot, e2e_s=finished_at - started,
                          input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost_usd, exact=exact,
                          similarity=similarity)


def _finite(x: float | None) -> float | None:
    # A bad measurement must cost one sample, not the request: Redis and the sketch refuse NaN/inf/<0.
    return x if x is not None and math.isfinite(x) and x >= 0.0 else None


@dataclass(slots=True)
class ArmTotals:
    """Everything known about one arm; also the unit a replica buffers and merges between flushes.

    Latency sketches hold successful requests only: a failed request's latency measures how fast
    it failed, which would make a failing arm look fast. Tokens and cost count every request,
    since a stream that broke half-way was still generated and paid for. `feedback_count` counts
    all feedback, `score_count` the feedback that carried a score.

    `assigned` counts requests the assignment gave this arm at the design's steady split (what the
    sample-ratio check compares with it), `ramp_assigned` those it gave while a ramp was still moving
    the split (no fixed share to compare them with); `requests` those it served from a backend;
    `cache_hits` those answered from the cache instead; `skipped` shadow requests not mirrored
    because the candidate was full.
    """

    alpha: float = DEFAULT_ALPHA
    max_buckets: int = DEFAULT_MAX_BUCKETS
    assigned: int = 0
    ramp_assigned: int = 0
    cache_hits: int = 0
    skipped: int = 0
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cost_sumsq: float = 0.0
    sketches: dict[str, LatencySketch] = field(default_factory=dict)
    feedback_count: int = 0
    score_count: int = 0
    score_sum: float = 0.0
    score_sumsq: float = 0.0
    labels: dict[str, int] = field(default_factory=dict)
    agreement_count: int = 0
    exact_count: int = 0
    similarity_sum: float = 0.0
    similarity_sumsq: float = 0.0

    def __post_init__(self) -> None:
        for metric in METRICS:
            self.sketches.setdefault(metric, LatencySketch(self.alpha, self.max_buckets))

    @property
    def score_mean(self) -> float:
        """The mean feedback score (NaN without scores)."""
        return self.score_sum / self.score_count if self.score_count else math.nan

    def add(self, obs: ArmObservation) -> None:
        """Count one request."""
        self.requests += 1
        self.errors += not obs.ok
        self.input_tokens += max(int(obs.input_tokens), 0)
        self.output_tokens += max(int(obs.output_tokens), 0)
        cost = _finite(obs.cost_usd) or 0.0
        self.cost_usd += cost
        self.cost_sumsq += cost * cost
        similarity = _finite(obs.similarity)
        if obs.exact is not None and similarity is not None:
            self.agreement_count += 1
            self.exact_count += obs.exact
            self.similarity_sum += similarity
            self.similarity_sumsq += similarity * similarity
        if obs.ok:
            for metric, value in (("ttft", obs.ttft_s), ("tpot", obs.tpot_s), ("e2e", obs.e2e_s)):
                if (good := _finite(value)) is not None:
                    self.sketches[metric].add(good)

    def add_feedback(self, score: float | None, label: str | None) -> None:
        """Count one piece of feedback (a score, a label, or both)."""
        self.feedback_count += 1
        # Scores may be negative (thumbs down = -1); only NaN/inf are dropped.
        if score is not None and math.isfinite(score):
            self.score_count += 1
            self.score_sum += score
            self.score_sumsq += score * score
        if label is not None:
            self.labels[label] = self.labels.get(label, 0) + 1

    def merge(self, other: ArmTotals) -> None:
        """Add `other` into this one (sketch merge is bucket-wise addition)."""
        for attr in (*_INT_FIELDS.values(), *_FLOAT_FIELDS.values()):
            setattr(self, attr, getattr(self, attr) + getattr(other, attr))
        for metric, sketch in other.sketches.items():
            self.sketches[metric].merge(sketch)
        for label, n in other.labels.items():
            self.labels[label] = self.labels.get(label, 0) + n

    def copy(self) -> ArmTotals:
        """An independent copy (callers of `totals` must not be able to change the store)."""
        fresh = ArmTotals(self.alpha, self.max_buckets)
        fresh.merge(self)
        return fresh

    def counter_increments(self) -> tuple[dict[str, int], dict[str, float]]:
        """The non-zero HINCRBY and HINCRBYFLOAT arguments for the counts hash."""
        ints = {name: getattr(self, attr) for name, attr in _INT_FIELDS.items()}
        ints.update({f"label:{label}": n for label, n in self.labels.items()})
        floats = {name: getattr(self, attr) for name, attr in _FLOAT_FIELDS.items()}
        return {k: v for k, v in ints.items() if v}, {k: v for k, v in floats.items() if v}

    @classmethod
    def from_fields(cls, counts: dict[bytes, bytes], sketches: dict[str, dict[bytes, bytes]],
                    alpha: float = DEFAULT_ALPHA, max_buckets: int = DEFAULT_MAX_BUCKETS) -> ArmTotals:
        """Rebuild from the HGETALL replies of the counts hash and the sketch hashes."""
        fields = {k.decode(): v.decode() for k, v in counts.items()}
        sketch_of = {m: LatencySketch.from_fields(sketches.get(m, {}), alpha=alpha, max_buckets=max_buckets)
                     for m in METRICS}
        totals = cls(alpha, max_buckets, sketches=sketch_of,
                     labels={k[6:]: int(v) for k, v in fields.items() if k.startswith("label:")})
        for name, attr in _INT_FIELDS.items():
            setattr(totals, attr, int(fields.get(name, 0)))
        for name, attr in _FLOAT_FIELDS.items():
            setattr(totals, attr, float(fields.get(name, 0.0)))
        return totals
