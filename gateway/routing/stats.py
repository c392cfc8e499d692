"""Time-decayed live statistics per backend, in process.

Each latency is a decayed weighted mean: on a sample `x` at time `t`, both the running sum and
the running weight first lose `0.5 ** (dt / half_life_s)` of themselves, then `x` and `1` are
added; the mean is sum / weight. Unlike an EWMA with a fixed alpha this treats a burst of
samples at one instant correctly and lets an idle backend's numbers age by time, not by count.

Latencies are *peak*-weighted: a sample above the current value becomes the value at once, so
a backend that slows down is avoided from its first slow answer; the peak then fades back to
the mean within seconds (see `DecayedMean`), so one noisy answer does not banish a backend.
Routing errs towards caution, as Finagle's peak-EWMA does, without holding a grudge.

The Redis implementation (`gateway/routing/shared.py`) keeps the same sums in Redis hashes and
applies exactly these updates in Lua.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.backend import BackendLoad
from gateway.routing.interfaces import BackendStats

Clock = Callable[[], float]
# A peak's excess over the mean halves in this fraction of the statistics' half-life.
PEAK_FADE = 0.25


class DecayedMean:
    """A time-decayed weighted mean; `peak=True` adds a peak that fades back to the mean.

    With a peak, a sample above the current value becomes the value at once; the excess over
    the plain mean then halves every `half_life_s / 4` whether or not more samples arrive, so
    one slow answer sends traffic elsewhere for a few seconds, not until the backend happens
    to be sampled again (which it would not be, once avoided).
    """

    __slots__ = ("at", "peak", "peak_at", "peaked", "total", "weight")

    def __init__(self, *, peak: bool = False) -> None:
        self.total = 0.0
        self.weight = 0.0
        self.at = 0.0
        self.peaked = peak
        self.peak = 0.0
        self.peak_at = 0.0

    def add(self, value: float, now: float, half_life_s: float) -> None:
        if self.peaked:
            current = self.value_at(now, half_life_s)
            if current is None or value > current:
                self.peak, self.peak_at = value, now
        if self.weight > 0.0:
            decay = 0.5 ** (max(0.0, now - self.at) / half_life_s)
            self.total *= decay
            self.weight *= decay
        self.at = now
        self.total += value
        self.weight += 1.0

    @property
    def mean(self) -> float | None:
        return self.total / self.weight if self.weight > 0.0 else None

    def value_at(self, now: float, half_life_s: float) -> float | None:
        """The mean, plus what is left of the last peak above it."""
        mean = self.mean
        if mean is None or not self.peaked or self.peak <= mean:
            return mean
        fade: float = 0.5 ** (max(0.0, now - self.peak_at) / (half_life_s * PEAK_FADE))
        return mean + (self.peak - mean) * fade


class DecayedCount:
    """A count that loses half its value every half-life."""

    __slots__ = ("at", "count")

    def __init__(self) -> None:
        self.count = 0.0
        self.at = 0.0

    def add(self, amount: float, now: float, half_life_s: float) -> None:
        self.count = self.read(now, half_life_s) + amount
        self.at = now

    def read(self, now: float, half_life_s: float) -> float:
        if self.count == 0.0:
            return 0.0
        decay: float = 0.5 ** (max(0.0, now - self.at) / half_life_s)
        return self.count * decay


class _BackendRecord:
    __slots__ = (
        "attempts",
        "concurrency",
        "e2e",
        "errors",
        "in_flight",
        "load",
        "output_tokens",
        "speed",
        "started",
        "tpot",
        "ttft",
    )

    def __init__(self) -> None:
        self.ttft = DecayedMean(peak=True)
        self.tpot = DecayedMean(peak=True)
        self.e2e = DecayedMean(peak=True)
        self.output_tokens = DecayedMean()
        self.speed = DecayedMean()  # one request's output tokens per second
        self.concurrency = DecayedMean()  # requests open on the backend when one starts, itself included
        self.attempts = DecayedCount()
        self.errors = DecayedCount()
        self.started = DecayedCount()
        self.in_flight = 0
        self.load = BackendLoad()


class LocalStats:
    """`RoutingStats` for one process.

    Time per output token is measured between a stream's first content token and its end;
    for a non-streaming request (no first token to see) the backend's TTFT mean is taken off
    its total time. Output throughput is one request's speed times the backend's mean
    concurrency: what the machine produces per second while it is working, which turns a
    GPU-hour price into a price per token.
    """

    def __init__(self, half_life_s: float = 10.0, clock: Clock = time.time) -> None:
        self.half_life_s = half_life_s
        self.clock = clock
        self._records: dict[str, _BackendRecord] = {}

    def _record(self, backend: str) -> _BackendRecord:
        record = self._records.get(backend)
        if record is None:
            record = self._records[backend] = _BackendRecord()
        return record

    def get(self, backend: str) -> BackendStats:
        record = self._records.get(backend)
        if record is None:
            return BackendStats()
        now, half_life = self.clock(), self.half_life_s
        attempts = record.attempts.read(now, half_life)
        speed, concurrency = record.speed.mean, record.concurrency.mean
        load = record.load
        return BackendStats(
            ttft_s=record.ttft.value_at(now, half_life),
            tpot_s=record.tpot.value_at(now, half_life),
            e2e_s=record.e2e.value_at(now, half_life),
            output_tokens=record.output_tokens.mean,
            error_rate=record.errors.read(now, half_life) / attempts if attempts > 0.0 else 0.0,
            samples=attempts,
            in_flight=record.in_flight,
            recent_requests=record.started.read(now, half_life),
            output_tokens_per_s=speed * concurrency if speed is not None and concurrency is not None else None,
            queued=load.waiting,
            running=load.running,
            capacity=load.capacity,
            kv_cache_usage=load.kv_cache_usage,
        )

    def started(self, backend: str) -> None:
        record = self._record(backend)
        record.in_flight += 1
        now = self.clock()
        record.started.add(1.0, now, self.half_life_s)
        record.concurrency.add(float(record.in_flight), now, self.half_life_s)

    def first_token(self, backend: str, ttft_s: float) -> None:
        self._record(backend).ttft.add(ttft_s, self.clock(), self.half_life_s)

    def finished(
        self, backend: str, *, ok: bool | None, e2e_s: float, ttft_s: float | None, output_tokens: int | None
    ) -> None:
        record = self._record(backend)
        record.in_flight = max(0, record.in_flight - 1)
        if ok is None:
            return  # not a sample: refused as the client's fault, or the client hung up
        now, half_life = self.clock(), self.half_life_s
        record.attempts.add(1.0, now, half_life)
        if not ok:
            record.errors.add(1.0, now, half_life)
            return
        record.e2e.add(e2e_s, now, half_life)
        if output_tokens is None or output_tokens <= 0:
            return
        record.output_tokens.add(float(output_tokens), now, half_life)
        if e2e_s > 0.0:
            record.speed.add(output_tokens / e2e_s, now, half_life)
        first = ttft_s if ttft_s is not None else record.ttft.mean
        if output_tokens > 1 and first is not None and e2e_s > first:
            record.tpot.add((e2e_s - first) / (output_tokens - 1), now, half_life)

    def observe_load(self, backend: str, load: BackendLoad) -> None:
        self._record(backend).load = load
