"""The Redis side of shared routing state: key layout, the Lua scripts that update it, and the
decoding of what they store.

Every update is one script run inside Redis with the caller's clock time as an argument, so
replicas never read a record, change it in Python and write it back. The scripts apply the
same arithmetic as `gateway/routing/stats.py` (decayed means and counts) and the same breaker
transitions as `gateway/routing/breaker.py`; a change to either must be made here too.

Keys, under a prefix (`gateway:{routing}` by default; a prefix without a hash tag is wrapped in one,
`test` becoming `{test}`, so every key shares one Redis Cluster slot and a script may take them all):

    {prefix}:replicas            sorted set: replica id -> clock time it last synced (heartbeat)
    {prefix}:inflight:{backend}  hash: replica id -> requests that replica has open on the backend
    {prefix}:stats:{backend}     hash: `{mean}:t|w|at` (decayed sum, weight, time) for ttft, tpot,
                                 e2e, otok, speed, conc, and `{mean}:p|pat` (peak, its time) for
                                 ttft, tpot, e2e; `{count}:c|at` for attempts, errors, started
    {prefix}:breaker:{backend}   hash: opened, failures, open_until, open_s, probe_until
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.backend import BackendLoad
from gateway.redis_connect import with_hash_tag
from gateway.routing.breaker import BreakerRecord
from gateway.routing.interfaces import BackendStats
from gateway.routing.stats import PEAK_FADE, DecayedCount, DecayedMean


class RedisKeys:
    """Names of the keys one gateway deployment shares."""

    def __init__(self, prefix: str) -> None:
        self.prefix = with_hash_tag(prefix)
        self.replicas = f"{self.prefix}:replicas"

    def in_flight(self, backend: str) -> str:
        return f"{self.prefix}:inflight:{backend}"

    def stats(self, backend: str) -> str:
        return f"{self.prefix}:stats:{backend}"

    def breaker(self, backend: str) -> str:
        return f"{self.prefix}:breaker:{backend}"


# Redis turns Lua numbers into strings with 14 significant digits; clock times need all 17.
_HELPERS = """
local function fmt(x) return string.format('%.17g', x) end

local function add_mean(key, name, x, now, half_life, peaked)
  local v = redis.call('HMGET', key, name .. ':t', name .. ':w', name .. ':at', name .. ':p', name .. ':pat')
  local total, weight, at = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
  local peak, peak_at = tonumber(v[4]) or 0, tonumber(v[5]) or 0
  if peaked then
    local current = nil
    if weight > 0 then
      current = total / weight
      if peak > current then
        current = current + (peak - current) * 0.5 ^ (math.max(0, now - peak_at) / (half_life * PEAK_FADE))
      end
    end
    if current == nil or x > current then
      redis.call('HSET', key, name .. ':p', fmt(x), name .. ':pat', fmt(now))
    end
  end
  if weight > 0 then
    local decay = 0.5 ^ (math.max(0, now - at) / half_life)
    total = total * decay
    weight = weight * decay
  end
  redis.call('HSET', key, name .. ':t', fmt(total + x), name .. ':w', fmt(weight + 1), name .. ':at', fmt(now))
end

local function add_count(key, name, amount, now, half_life)
  local v = redis.call('HMGET', key, name .. ':c', name .. ':at')
  local count, at = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  if count ~= 0 then count = count * 0.5 ^ (math.max(0, now - at) / half_life) end
  redis.call('HSET', key, name .. ':c', fmt(count + amount), name .. ':at', fmt(now))
end
""".replace("PEAK_FADE", repr(PEAK_FADE))

# KEYS: stats hash. ARGV: now, half_life_s, requests open on the backend (this one included).
STARTED = _HELPERS + """
local now, half_life = tonumber(ARGV[1]), tonumber(ARGV[2])
add_count(KEYS[1], 'started', 1, now, half_life)
add_mean(KEYS[1], 'conc', tonumber(ARGV[3]), now, half_life, false)
return 1
"""

# KEYS: stats hash. ARGV: now, half_life_s, ttft_s.
FIRST_TOKEN = _HELPERS + """
add_mean(KEYS[1], 'ttft', tonumber(ARGV[3]), tonumber(ARGV[1]), tonumber(ARGV[2]), true)
return 1
"""

# KEYS: stats hash. ARGV: now, half_life_s, ok (1/0), e2e_s, ttft_s or '', output_tokens or ''.
FINISHED = _HELPERS + """
local key = KEYS[1]
local now, half_life = tonumber(ARGV[1]), tonumber(ARGV[2])
local e2e, ttft, tokens = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
add_count(key, 'attempts', 1, now, half_life)
if ARGV[3] ~= '1' then
  add_count(key, 'errors', 1, now, half_life)
  return 1
end
add_mean(key, 'e2e', e2e, now, half_life, true)
if tokens == nil or tokens <= 0 then return 1 end
add_mean(key, 'otok', tokens, now, half_life, false)
if e2e > 0 then add_mean(key, 'speed', tokens / e2e, now, half_life, false) end
local first = ttft
if first == nil then
  -- A non-streaming request: the backend's plain TTFT mean stands in for its unseen first token.
  local v = redis.call('HMGET', key, 'ttft:t', 'ttft:w')
  local total, weight = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  if weight > 0 then first = total / weight end
end
if tokens > 1 and first ~= nil and e2e > first then
  add_mean(key, 'tpot', (e2e - first) / (tokens - 1), now, half_life, true)
end
return 1
"""

_BREAKER_READ = """
local function fmt(x) return string.format('%.17g', x) end
local key = KEYS[1]
local v = redis.call('HMGET', key, 'opened', 'failures', 'open_until', 'open_s', 'probe_until')
local opened, failures = tonumber(v[1]) or 0, tonumber(v[2]) or 0
local open_until, open_s, probe_until = tonumber(v[3]) or 0, tonumber(v[4]) or 0, tonumber(v[5]) or 0
local now = tonumber(ARGV[1])
"""

# KEYS: breaker hash. ARGV: now, ok (1/0), hard (1/0), failures to open, open_s, max_open_s.
# Returns the record after the transition (opened, failures, open_until, open_s, probe_until).
BREAKER_RECORD = _BREAKER_READ + """
local threshold, base, max_open = math.max(1, tonumber(ARGV[4])), tonumber(ARGV[5]), tonumber(ARGV[6])
if ARGV[2] == '1' then
  opened, failures, open_until, open_s, probe_until = 0, 0, 0, base, 0
else
  failures = failures + 1
  if opened == 0 then
    if ARGV[3] == '1' or failures >= threshold then
      opened, open_s, probe_until = 1, base, 0
      open_until = now + base
    end
  elseif now >= open_until then
    -- Half-open: the probe failed. A failure while still open changes no window.
    open_s = math.min(open_s * 2, max_open)
    open_until, probe_until = now + open_s, 0
  end
end
redis.call('HSET', key, 'opened', opened, 'failures', failures, 'open_until', fmt(open_until),
           'open_s', fmt(open_s), 'probe_until', fmt(probe_until))
return {opened, failures, fmt(open_until), fmt(open_s), fmt(probe_until)}
"""

# KEYS: breaker hash. ARGV: now, probe lease in seconds.
# Returns {granted (1/0), opened, failures, open_until, open_s, probe_until}.
BREAKER_PROBE = _BREAKER_READ + """
local granted = 0
if opened == 0 then
  granted = 1
elseif now >= open_until and now >= probe_until then
  probe_until = now + tonumber(ARGV[2])
  redis.call('HSET', key, 'probe_until', fmt(probe_until))
  granted = 1
end
return {granted, opened, failures, fmt(open_until), fmt(open_s), fmt(probe_until)}
"""

# KEYS: breaker hash. A claimed probe whose request ended without an outcome is given back.
BREAKER_RELEASE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'probe_until', '0') end
return 1
"""

# KEYS: replicas sorted set, then every in-flight hash. ARGV: cutoff clock time.
# Forgets replicas last seen before the cutoff, with their in-flight counts.
PRUNE = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
if #dead == 0 then return 0 end
for i = 2, #KEYS do
  for j = 1, #dead do redis.call('HDEL', KEYS[i], dead[j]) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
return #dead
"""

SCRIPTS: dict[str, str] = {
    "started": STARTED,
    "first_token": FIRST_TOKEN,
    "finished": FINISHED,
    "breaker_record": BREAKER_RECORD,
    "breaker_probe": BREAKER_PROBE,
    "breaker_release": BREAKER_RELEASE,
    "prune": PRUNE,
}


def breaker_from_reply(reply: list[object]) -> BreakerRecord:
    """A breaker record from a script's reply (opened, failures, open_until, open_s, probe_until)."""
    opened, failures, open_until, open_s, probe_until = reply
    return BreakerRecord(opened=int(str(opened)) == 1, failures=int(str(failures)),
                         open_until=float(str(open_until)), open_s=float(str(open_s)),
                         probe_until=float(str(probe_until)))


def breaker_from_hash(fields: Mapping[str, str]) -> BreakerRecord | None:
    """A breaker record from its hash; None when the backend has none (closed)."""
    if not fields:
        return None
    return BreakerRecord(
        opened=fields.get("opened") == "1",
        failures=int(fields.get("failures", "0")),
        open_until=float(fields.get("open_until", "0")),
        open_s=float(fields.get("open_s", "0")),
        probe_until=float(fields.get("probe_until", "0")),
    )


def _mean(fields: Mapping[str, str], name: str, *, peak: bool = False) -> DecayedMean:
    mean = DecayedMean(peak=peak)
    mean.total = float(fields.get(f"{name}:t", "0"))
    mean.weight = float(fields.get(f"{name}:w", "0"))
    mean.at = float(fields.get(f"{name}:at", "0"))
    if peak:
        mean.peak = float(fields.get(f"{name}:p", "0"))
        mean.peak_at = float(fields.get(f"{name}:pat", "0"))
    return mean


def _count(fields: Mapping[str, str], name: str) -> DecayedCount:
    count = DecayedCount()
    count.count = float(fields.get(f"{name}:c", "0"))
    count.at = float(fields.get(f"{name}:at", "0"))
    return count


def stats_from_hash(
    fields: Mapping[str, str], *, now: float, half_life_s: float, in_flight: int, load: BackendLoad
) -> BackendStats:
    """`BackendStats` from a stats hash, read at `now` exactly as `LocalStats.get` reads its record
    (with the same `DecayedMean` and `DecayedCount`)."""
    attempts = _count(fields, "attempts").read(now, half_life_s)
    speed, concurrency = _mean(fields, "speed").mean, _mean(fields, "conc").mean
    return BackendStats(
        ttft_s=_mean(fields, "ttft", peak=True).value_at(now, half_life_s),
        tpot_s=_mean(fields, "tpot", peak=True).value_at(now, half_life_s),
        e2e_s=_mean(fields, "e2e", peak=True).value_at(now, half_life_s),
        output_tokens=_mean(fields, "otok").mean,
        error_rate=_count(fields, "errors").read(now, half_life_s) / attempts if attempts > 0.0 else 0.0,
        samples=attempts,
        in_flight=in_flight,
        recent_requests=_count(fields, "started").read(now, half_life_s),
        output_tokens_per_s=speed * concurrency if speed is not None and concurrency is not None else None,
        queued=load.waiting,
        running=load.running,
        capacity=load.capacity,
        kv_cache_usage=load.kv_cache_usage,
    )
