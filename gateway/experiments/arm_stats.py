"""Per-arm experiment metrics: counters, latency sketches and user feedback, in-process or in Redis.

Every replica records what its requests did (`ArmObservation`) and what users said about them
(`record_feedback`, already joined to the serving arm by the caller); `totals` returns the merged
view per arm. Latencies are `LatencySketch`es, never raw lists, so memory and Redis traffic do not
grow with traffic and replicas merge by plain addition.

Redis layout (`p` is `key_prefix`, `gateway:{exp}:` by default: one hash tag for every experiment key, so
on Redis Cluster one flush script can write them all; names percent-escaped so ':' in a name cannot collide):

    {p}exp:{experiment}:arms                   SET   arm names (how `totals` finds the arms)
    {p}exp:{experiment}:{arm}:{ttft|tpot|e2e}  HASH  one sketch, the layout of `gateway.experiments.sketch`
    {p}exp:{experiment}:{arm}:counts           HASH  assigned, cache_hits, skipped, requests, errors,
                                                     input_tokens, output_tokens, cost_usd, cost_sumsq,
                                                     fb_n, fb_scored, fb_sum, fb_sumsq, label:<l>,
                                                     agree_n, agree_exact, sim_sum, sim_sumsq
    {p}flushed:{writer}                        STRING the number of the writer's last applied flush

`record` never waits: `RedisArmStats` merges observations into a local batch and a background task
writes each batch every `flush_interval_s` as one script call, so Redis sees one round trip per
interval however busy the replica is. While Redis is away, unwritten batches are kept, at most
`max_pending_batches` of them (the oldest is dropped first). A flush is applied exactly once: a
script runs atomically (all or nothing), and each flush carries this writer's id and a sequence
number that the script records beside the data, in `{p}flushed:{writer}`; a flush that failed is
sent again with the same number and the same batches, so when Redis had applied it and only the
reply was lost (a timeout), the repeat is recognised and skipped rather than counted twice.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from typing import Any, Literal, Protocol

import msgspec

from gateway.cache.redis_guard import RedisCallFailed
from gateway.config import RedisConfig
from gateway.experiments.arm_totals import METRICS, ArmObservation, ArmTotals
from gateway.experiments.redis_writer import EXPERIMENT_KEY_PREFIX, FlushedRedisWriter
from gateway.experiments.sketch import DEFAULT_ALPHA, DEFAULT_MAX_BUCKETS
from gateway.redis_connect import key_segment, with_hash_tag

log = logging.getLogger("gateway.experiments")

# One flush as one script: every increment, set member and min/max compare-and-set of the batch,
# applied atomically. The batch travels as one JSON argument, because a pipeline of one HINCRBY per
# sketch bucket cost the gateway's event loop ~4 ms of packing per flush (hundreds of commands);
# values are strings so no number is rounded on the way. Items: [key index, "s", member] adds to a
# set; [key index, "h", [field, n, ...], [field, x, ...], min, max] increments a hash (min/max
# optional: a sketch's extremes, kept by compare-and-set since they are not sums).
#
# KEYS[#KEYS] is the writer's sequence key: a flush numbered at or below the last one applied is a
# repeat of one whose reply was lost, and is skipped (returns 0). It expires a day after the writer's
# last flush, so writers that are gone (restarts, reloads) leave nothing behind.
_FLUSH_LUA = """
local seq_key = KEYS[#KEYS]
local last = tonumber(redis.call('GET', seq_key) or '0')
if tonumber(ARGV[2]) <= last then return 0 end
for _, item in ipairs(cjson.decode(ARGV[1])) do
  local key = KEYS[item[1]]
  if item[2] == 's' then
    redis.call('SADD', key, item[3])
  else
    local ints, floats = item[3], item[4]
    for i = 1, #ints, 2 do redis.call('HINCRBY', key, ints[i], ints[i + 1]) end
    for i = 1, #floats, 2 do redis.call('HINCRBYFLOAT', key, floats[i], floats[i + 1]) end
    if item[5] then
      local lo = redis.call('HGET', key, 'min')
      if not lo or tonumber(item[5]) < tonumber(lo) then redis.call('HSET', key, 'min', item[5]) end
      local hi = redis.call('HGET', key, 'max')
      if not hi or tonumber(item[6]) > tonumber(hi) then redis.call('HSET', key, 'max', item[6]) end
    end
  end
end
redis.call('SET', seq_key, ARGV[2], 'EX', ARGV[3])
return 1
"""
_SEQUENCE_TTL_S = 86_400


class ArmStatsUnavailable(Exception):
    """`totals` or `reset` could not reach the store (Redis away, breaker open, or over budget)."""


# The per-arm tallies that are one event each: an assignment (at the steady split, or during a ramp),
# a cache hit, a shadow request skipped.
Tally = Literal["assigned", "ramp_assigned", "cache_hits", "skipped"]


class ArmStatsStore(Protocol):
    """Where arm metrics go. `record`, `count` and `record_feedback` never block and never raise."""

    def record(self, obs: ArmObservation) -> None: ...
    def count(self, experiment: str, arm: str, tally: Tally) -> None: ...
    def record_feedback(self, experiment: str, arm: str, score: float | None, label: str | None) -> None: ...
    async def totals(self, experiment: str) -> dict[str, ArmTotals]: ...
    async def reset(self, experiment: str) -> None: ...
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...


Batch = dict[tuple[str, str], ArmTotals]


def _merge_into(target: Batch, source: Batch, alpha: float, max_buckets: int) -> None:
    for key, totals in source.items():
        if key not in target:
            target[key] = ArmTotals(alpha, max_buckets)
        target[key].merge(totals)


class _RecordsIntoTotals:
    """`record`, `count` and `record_feedback` for a store that keeps an `ArmTotals` per arm (`_arm`)."""

    def _arm(self, experiment: str, arm: str) -> ArmTotals:
        raise NotImplementedError

    def record(self, obs: ArmObservation) -> None:
        self._arm(obs.experiment, obs.arm).add(obs)

    def count(self, experiment: str, arm: str, tally: Tally) -> None:
        totals = self._arm(experiment, arm)
        setattr(totals, tally, getattr(totals, tally) + 1)

    def record_feedback(self, experiment: str, arm: str, score: float | None, label: str | None) -> None:
        self._arm(experiment, arm).add_feedback(score, label)


class InProcessArmStats(_RecordsIntoTotals):
    """Arm metrics of this process only (the embedded default, and the reference the Redis store must match)."""

    def __init__(self, alpha: float = DEFAULT_ALPHA, max_buckets: int = DEFAULT_MAX_BUCKETS) -> None:
        self.alpha, self.max_buckets = alpha, max_buckets
        self._arms: dict[str, dict[str, ArmTotals]] = {}

    def _arm(self, experiment: str, arm: str) -> ArmTotals:
        arms = self._arms.setdefault(experiment, {})
        if arm not in arms:
            arms[arm] = ArmTotals(self.alpha, self.max_buckets)
        return arms[arm]

    async def totals(self, experiment: str) -> dict[str, ArmTotals]:
        return {arm: t.copy() for arm, t in self._arms.get(experiment, {}).items()}

    async def reset(self, experiment: str) -> None:
        self._arms.pop(experiment, None)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisArmStats(FlushedRedisWriter, _RecordsIntoTotals):
    """Arm metrics shared by every replica through one Redis (layout in the module docstring).

    `totals` reads what has been flushed (this replica's last `flush_interval_s` is not in it until
    the next flush; call `flush` first to include it) and raises `ArmStatsUnavailable` when Redis is
    away, rather than returning partial or empty numbers that would look like a real (empty) result.
    `dropped` counts observations and feedback lost to the pending bound.
    """

    def __init__(self, redis: RedisConfig, *, key_prefix: str = EXPERIMENT_KEY_PREFIX, flush_interval_s: float = 0.1,
                 budget_s: float = 0.25, retry_s: float = 1.0, max_pending_batches: int = 600,
                 alpha: float = DEFAULT_ALPHA, max_buckets: int = DEFAULT_MAX_BUCKETS) -> None:
        super().__init__(redis, what="experiment stats", flush_interval_s=flush_interval_s,
                         budget_s=budget_s, retry_s=retry_s)
        self.key_prefix = with_hash_tag(key_prefix)
        self.max_pending_batches = max_pending_batches
        self.alpha, self.max_buckets = alpha, max_buckets
        self.dropped = 0
        self._flush_script = self.redis.register_script(_FLUSH_LUA)
        self._current: Batch = {}
        self._pending: deque[Batch] = deque()
        # Exactly-once flushes: this writer's id, the number of its latest flush, and how many of the
        # oldest pending batches that flush holds while unconfirmed (0: none in doubt). Until it is
        # confirmed, a retry sends those same batches under the same number.
        self.writer_id = uuid.uuid4().hex
        self._seq = 0
        self._in_doubt = 0

    @property
    def pending_batches(self) -> int:
        """Batches waiting for Redis (not counting the one being filled)."""
        return len(self._pending)

    def _key(self, experiment: str, suffix: str) -> str:
        return f"{self.key_prefix}exp:{key_segment(experiment)}:{suffix}"

    def _arm(self, experiment: str, arm: str) -> ArmTotals:
        key = (experiment, arm)
        if key not in self._current:
            self._current[key] = ArmTotals(self.alpha, self.max_buckets)
        return self._current[key]

    async def flush(self) -> bool:
        """Write every pending batch in one script call; False (batches kept) when Redis did not take it."""
        async with self._lock:
            if self._current:
                self._pending.append(self._current)
                self._current = {}
            while len(self._pending) > self.max_pending_batches:
                lost = self._pending.popleft()
                # A batch of an unconfirmed flush leaves it; the flush keeps its number, so if Redis had
                # applied it, the rest is still recognised as a repeat.
                self._in_doubt = max(0, self._in_doubt - 1)
                self.dropped += sum(t.requests + t.feedback_count for t in lost.values())
                if not self._warned_drop:  # once per outage: the guard already logged the outage itself
                    self._warned_drop = True
                    log.warning("experiment stats: Redis unreachable for %d flushes, dropping the oldest",
                                self.max_pending_batches)
            # One flush in doubt is settled first (same batches, same number); batches that came after
            # it go in the next flush, in the same call.
            while self._pending:
                if not self._in_doubt:
                    self._seq += 1
                    self._in_doubt = len(self._pending)
                batches = list(self._pending)[:self._in_doubt]
                try:
                    await self.guard.call("flush", lambda: self._write(batches, self._seq))  # noqa: B023 (awaited here)
                except RedisCallFailed:
                    return False
                for _ in batches:
                    self._pending.popleft()
                self._in_doubt = 0
            self._warned_drop = False
            return True

    async def _write(self, batches: list[Batch], seq: int) -> None:
        # Merging here rather than before `guard.call` means an open breaker costs no CPU.
        merged: Batch = {}
        for batch in batches:
            _merge_into(merged, batch, self.alpha, self.max_buckets)
        keys: list[str] = []
        items: list[list[Any]] = []

        def hash_item(key: str, ints: dict[str, int], floats: dict[str, float],
                      extremes: dict[str, float]) -> None:
            keys.append(key)
            # repr round-trips a float exactly, so sums and min/max read back bit-identical.
            item: list[Any] = [len(keys), "h", [v for k, n in ints.items() for v in (k, str(n))],
                               [v for k, x in floats.items() if x for v in (k, repr(x))]]
            if extremes:
                item += [repr(extremes["min"]), repr(extremes["max"])]
            items.append(item)

        for (experiment, arm), totals in merged.items():
            base = f"{key_segment(arm)}:"
            keys.append(self._key(experiment, "arms"))
            items.append([len(keys), "s", arm])
            ints, floats = totals.counter_increments()
            hash_item(self._key(experiment, base + "counts"), ints, floats, {})
            for metric, sketch in totals.sketches.items():
                if sketch.count:
                    counts, sums = sketch.to_increments()
                    hash_item(self._key(experiment, base + metric), counts, sums, sketch.extreme_fields())
        if items:
            keys.append(f"{self.key_prefix}flushed:{self.writer_id}")
            await self._flush_script(keys=keys, args=[msgspec.json.encode(items), seq, _SEQUENCE_TTL_S],
                                     client=self.redis)

    async def totals(self, experiment: str) -> dict[str, ArmTotals]:
        """Arm name to merged totals of every replica's flushed data; raises `ArmStatsUnavailable`."""
        try:
            raw_arms = await self.guard.call("totals", lambda: self.redis.smembers(self._key(experiment, "arms")))
            arms = sorted(_text(a) for a in raw_arms)
            names = ["counts", *METRICS]

            async def read() -> list[dict[bytes, bytes]]:
                pipe = self.redis.pipeline(transaction=True)  # one consistent snapshot of all arms
                for arm in arms:
                    for name in names:
                        pipe.hgetall(self._key(experiment, f"{key_segment(arm)}:{name}"))
                return list(await pipe.execute())

            hashes = await self.guard.call("totals", read) if arms else []
        except RedisCallFailed as err:
            raise ArmStatsUnavailable(f"experiment stats for {experiment!r} unavailable: {err}") from err
        result: dict[str, ArmTotals] = {}
        for i, arm in enumerate(arms):
            counts, *sketches = hashes[i * len(names):(i + 1) * len(names)]
            result[arm] = ArmTotals.from_fields(counts, dict(zip(METRICS, sketches, strict=True)),
                                                self.alpha, self.max_buckets)
        return result

    async def reset(self, experiment: str) -> None:
        """Delete the experiment's keys and this replica's unflushed data for it (other replicas'
        unflushed data still lands afterwards: reset before traffic starts, not during it)."""
        async with self._lock:
            for batch in (self._current, *self._pending):
                for key in [k for k in batch if k[0] == experiment]:
                    del batch[key]
        arms_key = self._key(experiment, "arms")
        try:
            arms = await self.guard.call("reset", lambda: self.redis.smembers(arms_key))
            keys = [self._key(experiment, f"{key_segment(_text(a))}:{n}") for a in arms for n in ("counts", *METRICS)]
            await self.guard.call("reset", lambda: self.redis.delete(arms_key, *keys))
        except RedisCallFailed as err:
            raise ArmStatsUnavailable(f"resetting experiment stats for {experiment!r} failed: {err}") from err

    def unflushed(self) -> str:
        lost = sum(t.requests + t.feedback_count for b in (self._current, *self._pending) for t in b.values())
        return f"{lost} observations"
