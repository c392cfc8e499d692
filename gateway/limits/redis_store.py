"""The limiter's shared store: every replica admits and charges against the same meters in Redis.

Admission is one EVALSHA per request (the script below: both rate limits and the budget, decided
and taken atomically inside Redis, on Redis's clock). Charges never make a request wait: they are
summed per key in the process and ride along with that key's next admission here (applied before
it is decided), or, when none comes within a few milliseconds, are written by one background task,
one pipelined round trip for every key charged meanwhile. Either way a busy key costs one round
trip per request, not two.

Keys, all under the API key's own hash tag (one Redis Cluster slot per API key; a script touches
only the keys it is given):

    gateway:{limits:<key name>}:rpm            requests meter, "level at_ms", expires once drained
    gateway:{limits:<key name>}:tpm            tokens meter, the same
    gateway:{limits:<key name>}:spend:<period> spend total in nano-dollars (INCRBY), kept a day past its period

When Redis is away or slower than the admission budget, the limiter lets requests through (fail
open: a limiter must not take the gateway down with it) and counts it; the guard logs once when
Redis goes and once when it is back. Charges made meanwhile are kept (one running sum per key) and
written when it answers again; tokens older than a minute by then are dropped, having no bearing on
any bucket any more, while spend is kept whatever its age. A write that ran out of time may still
have landed; it is sent again all the same (counted twice rather than lost).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoScriptError

from gateway.cache.redis_guard import RedisCallFailed, RedisGuard
from gateway.config import RedisConfig
from gateway.limits.budget import Period
from gateway.limits.gcra import LUA_GCRA, WINDOW_MS
from gateway.limits.store import Clock, KeyRule, StoreUnavailable, Verdict
from gateway.redis_connect import RedisClient, connect_redis, describe_redis

log = logging.getLogger("gateway.limits")

# Admission waits on Redis: past this the request goes through unlimited rather than wait longer.
ADMIT_BUDGET_S = 0.1
# Writing charges waits on nothing; a slow write only delays the next one.
CHARGE_BUDGET_S = 1.0
# How long a charge waits for its key's next admission to carry it before it is written on its own:
# what another replica may not see yet, a few milliseconds of a minute's budget.
CHARGE_DELAY_S = 0.005
RETRY_S = 1.0

# Charging tokens (drained first, then added whether they fit or not: gcra.charge) and spend. Spend is
# a whole number of nano-dollars (INCRBY): exact sums, and no INCRBYFLOAT in a script, which the
# redis-server 6.2 build the tests run was seen to corrupt its heap with.
LUA_CHARGE = r"""
local function charge(tokens_key, spend_key, now, tpm, tokens, nanos, ttl)
  if tpm > 0 and tokens > 0 then
    local level, at = drained(tokens_key, now, tpm)
    store(tokens_key, level + tokens, at, tpm)
  end
  if nanos > 0 then
    redis.call('INCRBY', spend_key, nanos)
    if ttl > 0 then redis.call('EXPIRE', spend_key, ttl) end
  end
end
"""

# KEYS: requests meter, tokens meter, spend total. ARGV: now ms ('' = Redis's TIME), requests per
# minute (0: none), tokens per minute (0: none), budget in USD ('' = none), then a pending charge of
# this key to apply first: tokens, nano-dollars, the spend key's TTL (0: none). After it, this is
# `store.decide`.
ADMIT_LUA = LUA_GCRA + LUA_CHARGE + r"""
local now = clock(ARGV[1])
local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
charge(KEYS[2], KEYS[3], now, tpm, tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
local refused, retry = 0, 0
local req_left, req_reset, tok_left, tok_reset, spent = -1, 0, -1, 0, 0
local taken, taken_at
if rpm > 0 then
  local level, at = drained(KEYS[1], now, rpm)
  local after = level + 1
  if after > rpm + EPSILON then
    refused, retry = 1, wait_ms(after - rpm, rpm)
    req_left, req_reset = math.floor(rpm - level + EPSILON), wait_ms(level, rpm)
  else
    taken, taken_at = after, at
    req_left, req_reset = math.floor(rpm - after + EPSILON), wait_ms(after, rpm)
  end
  if req_left < 0 then req_left = 0 end
end
if tpm > 0 then
  local level = drained(KEYS[2], now, tpm)
  if level + 1 > tpm + EPSILON then
    refused = refused + 2
    local wait = wait_ms(level + 1 - tpm, tpm)
    if wait > retry then retry = wait end
  end
  tok_left, tok_reset = math.floor(tpm - level + EPSILON), wait_ms(level, tpm)
  if tok_left < 0 then tok_left = 0 end
end
if ARGV[4] ~= '' then
  spent = (tonumber(redis.call('GET', KEYS[3]) or '0') or 0) / 1e9
  if spent >= tonumber(ARGV[4]) then refused = refused + 4 end
end
if refused == 0 and taken then store(KEYS[1], taken, taken_at, rpm) end
return {refused, num(retry), req_left, num(req_reset), tok_left, num(tok_reset), num(spent)}
"""

# KEYS: tokens meter, spend total. ARGV: now ms ('' = Redis's TIME), tokens per minute (0: none),
# tokens, nano-dollars, the spend key's TTL in seconds (0: none).
CHARGE_LUA = LUA_GCRA + LUA_CHARGE + r"""
charge(KEYS[1], KEYS[2], clock(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
       tonumber(ARGV[5]))
return 1
"""

# The charge script goes in pipelines as raw EVALSHA commands (see `_write`), so its digest is needed here.
_CHARGE_SHA = hashlib.sha1(CHARGE_LUA.encode()).hexdigest()


class _Charge:
    """Tokens and dollars charged to one key in one period and not yet written."""

    __slots__ = ("first_at", "period", "rule", "tokens", "usd")

    def __init__(self, rule: KeyRule, period: Period | None, tokens: int, usd: float, first_at: float) -> None:
        self.rule, self.period, self.tokens, self.usd, self.first_at = rule, period, tokens, usd, first_at


class RedisLimitStore:
    """Meters and spend totals in Redis; see the module doc. `clock` (epoch seconds) replaces Redis's
    own TIME in the scripts, for tests; `wall` dates charges (their age, the spend keys' TTL)."""

    shared = True

    def __init__(
        self,
        config: RedisConfig,
        *,
        clock: Clock | None = None,
        wall: Clock = time.time,
        admit_budget_s: float = ADMIT_BUDGET_S,
        retry_s: float = RETRY_S,
        on_error: Callable[[str], None] | None = None,
        client: RedisClient | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.wall = wall
        self.redis: RedisClient = client if client is not None else connect_redis(config, socket_timeout_s=2.0)
        self.guard = RedisGuard(self.describe_where, budget_s=admit_budget_s, retry_s=retry_s, what="rate limits")
        self._on_error = on_error
        self._admit = self.redis.register_script(ADMIT_LUA)  # EVALSHA, loading the script when Redis lacks it
        self._pending: dict[tuple[str, str], _Charge] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False

    def describe_where(self) -> str:
        return describe_redis(self.config)

    def describe(self) -> str:
        return f"shared by every replica through {self.describe_where()}"

    def _now_arg(self) -> str:
        return "" if self.clock is None else repr(self.clock() * 1000.0)

    async def admit(self, rule: KeyRule, period: Period | None) -> Verdict:
        keys = (rule.requests_key, rule.tokens_key, rule.spend_key(period))
        slot = (rule.name, period.id if period is not None else "")
        pending = self._pending.pop(slot, None)  # this key's charges not written yet: they go along
        args = (self._now_arg(), rule.requests_per_minute or 0, rule.tokens_per_minute or 0,
                "" if rule.budget_usd is None else repr(rule.budget_usd),
                *(self._charge_args(pending, self.wall()) if pending is not None else (0, 0, 0)))
        try:
            reply = await self.guard.call("admission", lambda: self._admit(keys=keys, args=args, client=self.redis))
        except RedisCallFailed as err:
            if pending is not None:
                self._keep({slot: pending})
            raise StoreUnavailable(str(err)) from err
        refused, retry, requests_left, requests_reset, tokens_left, tokens_reset, spent = reply
        return Verdict(int(refused), float(retry), int(requests_left), float(requests_reset), int(tokens_left),
                       float(tokens_reset), float(spent))

    def charge(self, rule: KeyRule, tokens: int, usd: float, period: Period | None) -> None:
        slot = (rule.name, period.id if period is not None else "")
        pending = self._pending.get(slot)
        if pending is None:
            self._pending[slot] = _Charge(rule, period, tokens, usd, self.wall())
        else:
            pending.tokens += tokens
            pending.usd += usd
        if self._flusher is None or self._flusher.done():
            try:
                self._flusher = asyncio.get_running_loop().create_task(self._flush_all(), name="limits-charges")
            except RuntimeError:
                pass  # no event loop (a test booking by hand): written with the next charge or at close

    async def _flush_all(self) -> None:
        """Write what is pending until nothing is; while Redis is away, try again every `retry_s`."""
        try:
            if not self._closing:
                await asyncio.sleep(CHARGE_DELAY_S)  # time for the key's next admission to carry it
            while self._pending:
                batch, self._pending = self._pending, {}
                if await self._write(batch):
                    continue
                self._keep(batch)
                if self._closing:
                    return
                await asyncio.sleep(self.guard.retry_s)
        except Exception:  # a bug must not silently stop charging
            log.exception("rate limits: writing charges failed unexpectedly")

    def _keep(self, batch: dict[tuple[str, str], _Charge]) -> None:
        """Put an unwritten batch back, in front of (summed with) what was charged meanwhile."""
        for slot, charge in batch.items():
            newer = self._pending.get(slot)
            if newer is not None:
                charge.tokens += newer.tokens
                charge.usd += newer.usd
            self._pending[slot] = charge

    @staticmethod
    def _charge_args(charge: _Charge, now: float) -> tuple[int, int, int]:
        """(tokens, nano-dollars, the spend key's TTL) for the scripts."""
        # Tokens charged more than a minute ago have drained from any bucket by now.
        tokens = charge.tokens if now - charge.first_at <= WINDOW_MS / 1000 else 0
        period = charge.period
        return tokens, round(charge.usd * 1e9), period.ttl_s(now) if period is not None else 0

    async def _write(self, batch: dict[tuple[str, str], _Charge]) -> bool:
        now = self.wall()
        now_arg = self._now_arg()
        calls: list[tuple[tuple[str, str], tuple[Any, ...]]] = []
        for charge in batch.values():
            rule = charge.rule
            calls.append(((rule.tokens_key, rule.spend_key(charge.period)),
                          (now_arg, rule.tokens_per_minute or 0, *self._charge_args(charge, now))))

        async def send() -> None:
            todo = calls
            for script in ("evalsha", "eval"):
                pipe = self.redis.pipeline(transaction=False)
                for keys, args in todo:
                    # As a raw command: redis-py's cluster pipeline refuses its evalsha/eval methods but
                    # routes a raw EVALSHA by its keys (both keys of a call share the API key's hash tag).
                    if script == "evalsha":
                        pipe.execute_command("EVALSHA", _CHARGE_SHA, 2, *keys, *args)
                    else:
                        pipe.execute_command("EVAL", CHARGE_LUA, 2, *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
                missing = []
                for call, reply in zip(todo, replies, strict=True):
                    if isinstance(reply, NoScriptError):
                        missing.append(call)
                    elif isinstance(reply, Exception):  # Redis refused this one (not away): say so, go on
                        log.error("rate limits: charging %s failed: %s", call[0][0], reply)
                if not missing:
                    return
                todo = missing

        try:
            await self.guard.call("charges", send, budget_s=CHARGE_BUDGET_S)
        except RedisCallFailed:
            if self._on_error is not None:
                self._on_error("charge")
            return False
        return True

    async def start(self) -> None:
        """Reach Redis once, so the first request does not pay for the connection (failing is fine:
        admission then fails open until Redis answers)."""
        try:
            await self.guard.call("connect", self.redis.ping, budget_s=2.0)  # type: ignore[arg-type]
        except RedisCallFailed:
            pass

    async def flush(self) -> None:
        """Wait until the background writer is idle: every charge made so far written (while Redis is
        away, that is when it is back)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def aclose(self) -> None:
        """Write what is pending (one try), then close the connection; never raises for Redis trouble."""
        self._closing = True
        if self._flusher is not None and not self._flusher.done():
            try:
                async with asyncio.timeout(CHARGE_BUDGET_S + 1.0):
                    await asyncio.shield(self._flusher)
            except TimeoutError:
                self._flusher.cancel()
        if self._pending:
            batch, self._pending = self._pending, {}
            if not await self._write(batch):
                log.warning("rate limits: charges of %d key(s) not written to %s at shutdown", len(batch),
                            self.describe_where())
        await self.redis.aclose()
