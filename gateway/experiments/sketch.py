"""A mergeable, bounded summary of a positive-valued distribution (latency, TTFT, tokens per second).

`LatencySketch` is a log-bucketed histogram in the manner of DDSketch (Masson, Rim and Lee, "DDSketch:
a fast and fully-mergeable quantile sketch with relative-error guarantees", VLDB 2019): every value
lands in the bucket `ceil(log(x) / log(gamma))` with `gamma = (1 + alpha) / (1 - alpha)`, so a bucket
spans a fixed *ratio* and reporting its midpoint is off by at most `alpha` relative to any value in
it. Next to the buckets it keeps the exact count, sum, sum of squares, min and max, so means and
variances are exact and only quantiles are approximate.

Merging is bucket-wise addition, which is what lets replicas share one summary through Redis with
atomic increments instead of shipping raw samples. The intended Redis layout is one hash per
(experiment, arm, metric), e.g. `exp:{experiment}:{arm}:{metric}`, with fields:

    "b:<index>"  HINCRBY       count of values in bucket <index>
    "z"          HINCRBY       count of values at or below the zero threshold
    "n"          HINCRBY       total count
    "sum"        HINCRBYFLOAT  sum of values
    "sumsq"      HINCRBYFLOAT  sum of squared values
    "min","max"  compare-and-set in a small Lua script (not an increment), see `extreme_fields`

A replica keeps a local sketch of what it saw since its last flush, sends `to_increments()` in one
pipeline, and starts a fresh local sketch; readers rebuild the whole with `from_fields(HGETALL ...)`.
`alpha` and `max_buckets` are configuration of the metric, not stored in the hash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import msgspec

DEFAULT_ALPHA = 0.01
DEFAULT_MAX_BUCKETS = 2048
# Below this a value is "zero" for a latency: log-bucketing it would waste buckets on noise.
DEFAULT_ZERO_THRESHOLD = 1e-9


class _WireSketch(msgspec.Struct, array_like=True, frozen=True):
    """The msgpack form of a sketch (array-like: field names are not repeated in every blob)."""

    alpha: float
    max_buckets: int
    zero_threshold: float
    count: int
    zero_count: int
    total: float
    total_sq: float
    min: float
    max: float
    floor: int | None
    buckets: dict[int, int]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_WireSketch)


class RedisIncrements(NamedTuple):
    """What a flush adds to the Redis hash: `counts` by HINCRBY, `sums` by HINCRBYFLOAT."""

    counts: dict[str, int]
    sums: dict[str, float]


class LatencySketch:
    """Log-bucketed histogram with relative accuracy `alpha`, plus exact count, sum, sum of squares, min, max.

    Memory is bounded by `max_buckets`: past it the lowest buckets are folded into the lowest kept one,
    so only the lowest quantiles lose accuracy (they are over-estimated, never under-estimated). For
    latencies that is the right end to sacrifice: nobody pages on the p1.
    """

    __slots__ = ("_buckets", "_floor", "_inv_log_gamma", "_log_gamma", "alpha", "count", "gamma", "max",
                 "max_buckets", "min", "sum", "sum_sq", "zero_count", "zero_threshold")  # fmt: skip

    def __init__(
        self,
        alpha: float = DEFAULT_ALPHA,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        zero_threshold: float = DEFAULT_ZERO_THRESHOLD,
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be positive, got {max_buckets}")
        self.alpha = alpha
        self.max_buckets = max_buckets
        self.zero_threshold = zero_threshold
        self.gamma = (1.0 + alpha) / (1.0 - alpha)
        self._log_gamma = math.log(self.gamma)
        self._inv_log_gamma = 1.0 / self._log_gamma
        self._buckets: dict[int, int] = {}
        # Once buckets were collapsed, every index below `_floor` is counted in `_floor`.
        self._floor: int | None = None
        self.count = 0
        self.zero_count = 0
        self.sum = 0.0
        self.sum_sq = 0.0
        self.min = math.inf
        self.max = -math.inf

    # -- recording -------------------------------------------------------------------------------

    def add(self, x: float, count: int = 1) -> None:
        """Record `count` occurrences of the value `x` (must be >= 0 and finite)."""
        if count <= 0:
            if count == 0:
                return
            raise ValueError(f"count must be non-negative, got {count}")
        if not (x >= 0.0 and math.isfinite(x)):  # also rejects NaN
            raise ValueError(f"values must be finite and non-negative, got {x}")
        self.count += count
        self.sum += x * count
        self.sum_sq += x * x * count
        self.min = min(self.min, x)
        self.max = max(self.max, x)
        if x <= self.zero_threshold:
            self.zero_count += count
            return
        index = self.index_of(x)
        if self._floor is not None and index < self._floor:
            index = self._floor
        self._buckets[index] = self._buckets.get(index, 0) + count
        if len(self._buckets) > self.max_buckets:
            self._collapse()

    def merge(self, other: LatencySketch) -> None:
        """Add `other`'s contents into this sketch; bucket-exact as long as neither had to collapse."""
        if other.gamma != self.gamma:
            raise ValueError("cannot merge sketches with different alpha")
        if other._floor is not None and (self._floor is None or other._floor > self._floor):
            self._floor = other._floor
        for index, n in list(other._buckets.items()):
            self._add_bucket(index, n)
        self.count += other.count
        self.zero_count += other.zero_count
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self._collapse()

    def _add_bucket(self, index: int, n: int) -> None:
        if self._floor is not None and index < self._floor:
            index = self._floor
        self._buckets[index] = self._buckets.get(index, 0) + n

    def _collapse(self) -> None:
        """Fold the lowest buckets into the lowest surviving one until at most `max_buckets` remain."""
        excess = len(self._buckets) - self.max_buckets
        if excess <= 0:
            return
        lowest = sorted(self._buckets)[: excess + 1]
        target = lowest[-1]
        self._buckets[target] += sum(self._buckets.pop(index) for index in lowest[:-1])
        self._floor = target

    # -- reading ---------------------------------------------------------------------------------

    def index_of(self, x: float) -> int:
        """The bucket of a positive value: bucket `i` holds the values in (gamma**(i-1), gamma**i]."""
        return math.ceil(math.log(x) * self._inv_log_gamma)

    def value_of(self, index: int) -> float:
        """The value reported for bucket `index`: within `alpha` relative error of anything in it.

        2 * gamma**i / (gamma + 1) is the point whose relative distance to both bucket edges is
        (gamma - 1) / (gamma + 1) = alpha (DDSketch, Section 2).
        """
        return 2.0 * math.exp(index * self._log_gamma) / (self.gamma + 1.0)

    def bucket_counts(self) -> dict[int, int]:
        """A copy of the non-empty buckets, index to count (the zero bucket is `zero_count`)."""
        return dict(self._buckets)

    @property
    def mean(self) -> float:
        """The exact mean (NaN when empty)."""
        return self.sum / self.count if self.count else math.nan

    @property
    def variance(self) -> float:
        """The sample variance (n - 1 denominator; NaN below two values), exact up to float rounding."""
        if self.count < 2:
            return math.nan
        # Sums rather than Welford's update, because sums are what Redis can add atomically.
        centered = self.sum_sq - self.sum * self.sum / self.count
        return max(centered, 0.0) / (self.count - 1)

    def quantile(self, q: float) -> float:
        """The `q`-quantile (0 <= q <= 1), within `alpha` relative error of the sample's order statistic.

        Follows DDSketch's rank convention: the element at 0-based rank floor(q * (n - 1)) of the
        sorted sample. Collapsed low buckets make low quantiles read high. NaN when empty.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        if self.count == 0:
            return math.nan
        return self.value_at_rank(math.floor(q * (self.count - 1)))

    def value_at_rank(self, rank: int) -> float:
        """The estimate of the sorted sample's element at 0-based `rank` (clamped to the sample)."""
        if self.count == 0:
            return math.nan
        seen = self.zero_count
        if seen > rank:
            return self.min
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen > rank:
                # Clamping to the exact range can only move the answer towards the true value.
                return min(max(self.value_of(index), self.min), self.max)
        return self.max

    # -- serialisation ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The msgpack encoding of the whole sketch (configuration included)."""
        return _encoder.encode(
            _WireSketch(
                alpha=self.alpha,
                max_buckets=self.max_buckets,
                zero_threshold=self.zero_threshold,
                count=self.count,
                zero_count=self.zero_count,
                total=self.sum,
                total_sq=self.sum_sq,
                min=self.min,
                max=self.max,
                floor=self._floor,
                buckets=self._buckets,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LatencySketch:
        """Rebuild a sketch written by `to_bytes`."""
        wire = _decoder.decode(data)
        sketch = cls(wire.alpha, wire.max_buckets, wire.zero_threshold)
        sketch._buckets = dict(wire.buckets)
        sketch._floor = wire.floor
        sketch.count = wire.count
        sketch.zero_count = wire.zero_count
        sketch.sum = wire.total
        sketch.sum_sq = wire.total_sq
        sketch.min = wire.min
        sketch.max = wire.max
        return sketch

    def to_increments(self) -> RedisIncrements:
        """The HINCRBY / HINCRBYFLOAT arguments that add this sketch to a Redis hash (layout above)."""
        counts = {f"b:{index}": n for index, n in self._buckets.items()}
        if self.zero_count:
            counts["z"] = self.zero_count
        counts["n"] = self.count
        return RedisIncrements(counts, {"sum": self.sum, "sumsq": self.sum_sq})

    def extreme_fields(self) -> dict[str, float]:
        """The "min"/"max" candidates for the Lua compare-and-set (empty when nothing was recorded)."""
        return {"min": self.min, "max": self.max} if self.count else {}

    @classmethod
    def from_fields(
        cls,
        fields: Mapping[str, str | bytes | int | float] | Mapping[bytes, bytes],
        *,
        alpha: float = DEFAULT_ALPHA,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        zero_threshold: float = DEFAULT_ZERO_THRESHOLD,
    ) -> LatencySketch:
        """Rebuild a sketch from a Redis hash (HGETALL's dict; bytes or str keys and values).

        Without "min"/"max" fields the extremes are taken from the outermost buckets, so they carry the
        same `alpha` relative error as quantiles.
        """
        sketch = cls(alpha, max_buckets, zero_threshold)
        extremes: dict[str, float] = {}
        for raw_key, raw_value in fields.items():
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
            if key.startswith("b:"):
                sketch._add_bucket(int(key[2:]), int(value))
            elif key == "z":
                sketch.zero_count = int(value)
            elif key == "n":
                sketch.count = int(value)
            elif key == "sum":
                sketch.sum = float(value)
            elif key == "sumsq":
                sketch.sum_sq = float(value)
            elif key in ("min", "max"):
                extremes[key] = float(value)
        sketch._collapse()
        if sketch.count:
            lowest = 0.0 if sketch.zero_count or not sketch._buckets else sketch.value_of(min(sketch._buckets))
            highest = sketch.value_of(max(sketch._buckets)) if sketch._buckets else 0.0
            sketch.min = extremes.get("min", lowest)
            sketch.max = extremes.get("max", highest)
        return sketch
