"""An experiment's history (its running estimate over time) and stop state, shared by replicas.

Every replica looks at the experiment on its own schedule and `append`s what it saw; `min_gap_s`
makes the journal keep about one point per interval however many replicas there are. The first
`stop` wins, so replicas that decide to stop at the same moment for different reasons still agree
on one reason and one arm to serve.

Redis layout (`p` is `key_prefix`, `gateway:{exp}:` by default, the hash tag shared by every experiment key
(see `gateway.experiments.redis_writer`); the name percent-escaped as in `gateway.experiments.arm_stats`):

    {p}exp:{experiment}:history   LIST    msgspec JSON `HistoryPoint`s, oldest first, at most `max_points`
    {p}exp:{experiment}:stopped   STRING  msgspec JSON `StopState`, set once
"""

from __future__ import annotations

import logging
from typing import Protocol

import msgspec

from gateway.cache.redis_guard import RedisCallFailed, RedisGuard
from gateway.config import RedisConfig
from gateway.experiments.redis_writer import EXPERIMENT_KEY_PREFIX
from gateway.experiments.timeline import HistoryPoint, StopState
from gateway.redis_connect import RedisClient, connect_redis, describe_redis, key_segment, with_hash_tag

log = logging.getLogger("gateway.experiments")

# One script so that reading the last point and pushing the new one cannot interleave with another
# replica's append (two replicas would otherwise both see an old last point and both add theirs).
# A last point that does not decode is treated as absent: it must not block history forever.
_APPEND_LUA = """
local last = redis.call('LINDEX', KEYS[1], -1)
if last then
  local ok, point = pcall(cjson.decode, last)
  if ok and type(point) == 'table' and type(point['at']) == 'number'
     and tonumber(ARGV[2]) - point['at'] < tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
return 1
"""

# SET NX then GET in one step: the state in force, whoever set it. (SET NX GET needs Redis 7.)
_STOP_LUA = """
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""


class JournalUnavailable(Exception):
    """The journal could not reach the store (Redis away, breaker open, or over budget)."""


class ExperimentJournal(Protocol):
    """History and stop state of experiments; the Redis one raises `JournalUnavailable` when Redis is away."""

    async def append(self, experiment: str, point: HistoryPoint, *, min_gap_s: float, max_points: int = 500) -> bool:
        ...
    async def history(self, experiment: str) -> list[HistoryPoint]: ...
    async def stop(self, experiment: str, state: StopState) -> StopState: ...
    async def stopped(self, experiment: str) -> StopState | None: ...
    async def reset(self, experiment: str) -> None: ...
    async def aclose(self) -> None: ...


class InProcessJournal:
    """The journal of this process only (the embedded default, and the reference the Redis one must match)."""

    def __init__(self) -> None:
        self._history: dict[str, list[HistoryPoint]] = {}
        self._stopped: dict[str, StopState] = {}

    async def append(self, experiment: str, point: HistoryPoint, *, min_gap_s: float, max_points: int = 500) -> bool:
        """Add `point` unless the last one is less than `min_gap_s` older; keep the newest `max_points`."""
        points = self._history.setdefault(experiment, [])
        if points and point.at - points[-1].at < min_gap_s:
            return False
        points.append(point)
        del points[:-max_points]
        return True

    async def history(self, experiment: str) -> list[HistoryPoint]:
        return list(self._history.get(experiment, []))

    async def stop(self, experiment: str, state: StopState) -> StopState:
        """Record the stop unless one is already in force; returns the one in force."""
        return self._stopped.setdefault(experiment, state)

    async def stopped(self, experiment: str) -> StopState | None:
        return self._stopped.get(experiment)

    async def reset(self, experiment: str) -> None:
        self._history.pop(experiment, None)
        self._stopped.pop(experiment, None)

    async def aclose(self) -> None:
        return None


_point_decoder = msgspec.json.Decoder(HistoryPoint)
_stop_decoder = msgspec.json.Decoder(StopState)


class RedisJournal:
    """A journal shared by every replica through one Redis (layout in the module docstring).

    Every call is one guarded round trip; failures raise `JournalUnavailable` rather than an empty
    history or "not stopped", which a caller could mistake for the truth (and restart a stopped arm).
    """

    def __init__(self, redis: RedisConfig, *, key_prefix: str = EXPERIMENT_KEY_PREFIX, budget_s: float = 0.25,
                 retry_s: float = 1.0) -> None:
        self.redis_config, self.key_prefix = redis, with_hash_tag(key_prefix)
        self.guard = RedisGuard(self.describe, budget_s=budget_s, retry_s=retry_s, what="experiment journal")
        self.redis: RedisClient = connect_redis(redis, socket_timeout_s=2.0)
        self._append_script = self.redis.register_script(_APPEND_LUA)
        self._stop_script = self.redis.register_script(_STOP_LUA)

    def describe(self) -> str:
        return describe_redis(self.redis_config)

    def key(self, experiment: str, suffix: str) -> str:
        """The Redis key of one of the experiment's records (`history` or `stopped`)."""
        return f"{self.key_prefix}exp:{key_segment(experiment)}:{suffix}"

    async def append(self, experiment: str, point: HistoryPoint, *, min_gap_s: float, max_points: int = 500) -> bool:
        """Add `point` unless the last one is less than `min_gap_s` older; keep the newest `max_points`."""
        key = self.key(experiment, "history")
        # repr round-trips a float exactly, so the script compares the same numbers Python would.
        args: list[bytes | str] = [msgspec.json.encode(point), repr(point.at), repr(min_gap_s), str(max(1, max_points))]
        try:
            added = await self.guard.call("append", lambda: self._append_script(keys=[key], args=args,
                                                                                client=self.redis))
        except RedisCallFailed as err:
            raise JournalUnavailable(f"history of experiment {experiment!r} unavailable: {err}") from err
        return bool(added)

    async def history(self, experiment: str) -> list[HistoryPoint]:
        """Stored points, oldest first (any that do not decode are skipped and logged)."""
        key = self.key(experiment, "history")
        try:
            raw = await self.guard.call("history", lambda: self.redis.lrange(key, 0, -1))
        except RedisCallFailed as err:
            raise JournalUnavailable(f"history of experiment {experiment!r} unavailable: {err}") from err
        points: list[HistoryPoint] = []
        for item in raw:
            try:
                points.append(_point_decoder.decode(item))
            except msgspec.DecodeError:
                log.error("experiment journal: %s holds a point that does not decode: %r", key, item[:100])
        return points

    async def stop(self, experiment: str, state: StopState) -> StopState:
        """Record the stop unless one is already in force; returns the one in force."""
        key = self.key(experiment, "stopped")
        try:
            raw = await self.guard.call("stop", lambda: self._stop_script(keys=[key], args=[msgspec.json.encode(state)],
                                                                          client=self.redis))
        except RedisCallFailed as err:
            raise JournalUnavailable(f"stopping experiment {experiment!r} failed: {err}") from err
        return self._decode_stop(key, raw)

    async def stopped(self, experiment: str) -> StopState | None:
        """The stop in force, or None while the experiment runs."""
        key = self.key(experiment, "stopped")
        try:
            raw = await self.guard.call("stopped", lambda: self.redis.get(key))
        except RedisCallFailed as err:
            raise JournalUnavailable(f"stop state of experiment {experiment!r} unavailable: {err}") from err
        return None if raw is None else self._decode_stop(key, raw)

    @staticmethod
    def _decode_stop(key: str, raw: bytes | str) -> StopState:
        try:
            return _stop_decoder.decode(raw)
        except msgspec.DecodeError as err:
            # Unknown is not "running": the caller must not resume an experiment that may have stopped.
            log.error("experiment journal: %s holds a stop state that does not decode: %r", key, raw[:100])
            raise JournalUnavailable(f"stop state under {key} does not decode: {err}") from err

    async def reset(self, experiment: str) -> None:
        """Forget the experiment's history and stop."""
        keys = [self.key(experiment, "history"), self.key(experiment, "stopped")]
        try:
            await self.guard.call("reset", lambda: self.redis.delete(*keys))
        except RedisCallFailed as err:
            raise JournalUnavailable(f"resetting experiment {experiment!r} failed: {err}") from err

    async def aclose(self) -> None:
        """Close the connection."""
        await self.redis.aclose()
