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
_INT_FIELDS = ("requests", "errors", "input_tokens", "output_tokens", "fb_n", "fb_scored")


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
    """

    alpha: float = DEFAULT_ALPHA
    max_buckets: int = DEFAULT_MAX_BUCKETS
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    sketches: dict[str, LatencySketch] = field(default_factory=dict)
    feedback_count: int = 0
    score_count: int = 0
    score_sum: float = 0.0
    score_sumsq: float = 0.0
    labels: dict[str, int] = field(default_factory=dict)

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
        self.cost_usd += _finite(obs.cost_usd) or 0.0
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
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd
        for metric, sketch in other.sketches.items():
            self.sketches[metric].merge(sketch)
        self.feedback_count += other.feedback_count
        self.score_count += other.score_count
        self.score_sum += other.score_sum
        self.score_sumsq += other.score_sumsq
        for label, n in other.labels.items():
            self.labels[label] = self.labels.get(label, 0) + n

    def copy(self) -> ArmTotals:
        """An independent copy (callers of `totals` must not be able to change the store)."""
        fresh = ArmTotals(self.alpha, self.max_buckets)
        fresh.merge(self)
        return fresh

    def counter_increments(self) -> tuple[dict[str, int], dict[str, float]]:
        """The non-zero HINCRBY and HINCRBYFLOAT arguments for the counts hash."""
        ints = {name: getattr(self, attr) for name, attr in zip(_INT_FIELDS, (
            "requests", "errors", "input_tokens", "output_tokens", "feedback_count", "score_count"), strict=True)}
        ints.update({f"label:{label}": n for label, n in self.labels.items()})
        floats = {"cost_usd": self.cost_usd, "fb_sum": self.score_sum, "fb_sumsq": self.score_sumsq}
        return {k: v for k, v in ints.items() if v}, {k: v for k, v in floats.items() if v}

    @classmethod
    def from_fields(cls, counts: dict[bytes, bytes], sketches: dict[str, dict[bytes, bytes]],
                    alpha: float = DEFAULT_ALPHA, max_buckets: int = DEFAULT_MAX_BUCKETS) -> ArmTotals:
        """Rebuild from the HGETALL replies of the counts hash and the sketch hashes."""
        fields = {k.decode(): v.decode() for k, v in counts.items()}
        sketch_of = {m: LatencySketch.from_fields(sketches.get(m, {}), alpha=alpha, max_buckets=max_buckets)
                     for m in METRICS}
        return cls(alpha, max_buckets,
                   requests=int(fields.get("requests", 0)), errors=int(fields.get("errors", 0)),
                   input_tokens=int(fields.get("input_tokens", 0)), output_tokens=int(fields.get("output_tokens", 0)),
                   cost_usd=float(fields.get("cost_usd", 0.0)), sketches=sketch_of,
                   feedback_count=int(fields.get("fb_n", 0)), score_count=int(fields.get("fb_scored", 0)),
                   score_sum=float(fields.get("fb_sum", 0.0)), score_sumsq=float(fields.get("fb_sumsq", 0.0)),
                   labels={k[6:]: int(v) for k, v in fields.items() if k.startswith("label:")})
