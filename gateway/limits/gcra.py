"""GCRA for requests and tokens per minute: the arithmetic in Python (the in-process store) and in Lua
(the Redis store), kept side by side so they cannot drift apart.

GCRA (the generic cell rate algorithm) is usually written with a theoretical arrival time (TAT): a
request of cost n is admitted when `max(TAT, now) + n*T - burst*T <= now`, with `T = 60 s / limit`.
Here it is kept in its equivalent leaky-bucket form, a *level* (units used and not yet drained) and
the time it was written: `TAT = at + level*T`. The decisions are identical; the stored number stays
small, so whole costs add up exactly in doubles (Lua has no integers) where a TAT in epoch
milliseconds would round at every step and let an exact boundary (the N+1st of N requests) slip.

Both limits allow a full minute's worth at once (the burst is the per-minute limit) and then drain
at `limit` per minute:

- requests per minute: `take` with cost 1 at admission; a refused request costs nothing.
- tokens per minute: the cost is only known when the answer is complete, so admission `peek`s
  (is there room for one more token?) and the request's actual tokens are `charge`d afterwards,
  unconditionally. A long answer may push the level past the burst: the key is then *in debt*
  and refused until it has drained back below a full minute's worth. That is the OpenAI-style
  semantics without a token estimate: a key can overshoot by its requests in flight, never more,
  and pays the overshoot back in waiting.

Retry-After is exact: the time until the level has drained enough for the refused cost.
"""

from __future__ import annotations

import math
from typing import NamedTuple

WINDOW_MS = 60_000.0
# Slack for the comparison with the burst: decay is `elapsed * limit / 60000`, whose rounding could
# otherwise refuse a request that fits exactly. A billionth of a unit decides nothing real.
EPSILON = 1e-9


class Meter(NamedTuple):
    """A bucket's level (units) and when it was last written (ms, the store's clock)."""

    level: float
    at_ms: float


EMPTY = Meter(0.0, float("-inf"))


def drained(meter: Meter, now_ms: float, limit: int) -> tuple[float, float]:
    """(level now, the time it is valid at): the meter drained at `limit` per minute until `now_ms`.
    A clock that went back (replicas' clocks, a stepped clock) drains nothing and keeps the later time."""
    if now_ms <= meter.at_ms:
        return meter.level, meter.at_ms
    return max(0.0, meter.level - (now_ms - meter.at_ms) * limit / WINDOW_MS), now_ms


def wait_ms(excess: float, limit: int) -> float:
    """Milliseconds until `excess` units have drained."""
    return max(0.0, excess) * WINDOW_MS / limit


class Take(NamedTuple):
    """The outcome of a `take` or `peek`: admitted or not, the wait when not (ms), units left after
    it, the time until the bucket is empty (ms: OpenAI's x-ratelimit-reset-*), and the meter to store."""

    allowed: bool
    retry_ms: float
    remaining: int
    reset_ms: float
    meter: Meter


def take(meter: Meter, now_ms: float, limit: int, cost: float) -> Take:
    """Admit `cost` units if they fit in the burst; the meter is only advanced when they do."""
    level, at = drained(meter, now_ms, limit)
    after = level + cost
    if after > limit + EPSILON:
        return Take(False, wait_ms(after - limit, limit), max(0, math.floor(limit - level + EPSILON)),
                    wait_ms(level, limit), Meter(level, at))
    return Take(True, 0.0, max(0, math.floor(limit - after + EPSILON)), wait_ms(after, limit), Meter(after, at))


def peek(meter: Meter, now_ms: float, limit: int) -> Take:
    """Whether one more unit fits (the tokens check before a request), without taking it."""
    level, at = drained(meter, now_ms, limit)
    fits = level + 1.0 <= limit + EPSILON
    return Take(fits, 0.0 if fits else wait_ms(level + 1.0 - limit, limit),
                max(0, math.floor(limit - level + EPSILON)), wait_ms(level, limit), Meter(level, at))


def charge(meter: Meter, now_ms: float, limit: int, cost: float) -> Meter:
    """Add `cost` units whether they fit or not (tokens already spent): the level may pass the burst."""
    level, at = drained(meter, now_ms, limit)
    return Meter(level + cost, at)


# -- the same arithmetic in Lua, for the Redis store's scripts -----------------------------------
# A meter is one string "level at_ms", both as %.17g (a Lua number's tostring keeps only 14 digits).
# `now` is the script's clock: the caller's when it passes one (tests), else Redis's own TIME, so
# every replica drains the same buckets on the same clock whatever its host's clock says.
LUA_GCRA = r"""
local WINDOW, EPSILON = 60000, 1e-9

local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

local function drained(key, now, limit)
  local raw = redis.call('GET', key)
  if not raw then return 0, now end
  local level, at = string.match(raw, '^(%S+) (%S+)$')
  level, at = tonumber(level), tonumber(at)
  if not level or not at then return 0, now end
  if now <= at then return level, at end
  local left = level - (now - at) * limit / WINDOW
  if left < 0 then left = 0 end
  return left, now
end

local function wait_ms(excess, limit)
  if excess < 0 then excess = 0 end
  return excess * WINDOW / limit
end

local function store(key, level, at, limit)
  redis.call('SET', key, string.format('%.17g %.17g', level, at), 'PX', math.ceil(wait_ms(level, limit)) + 1000)
end

local function num(x) return string.format('%.17g', x) end
"""
