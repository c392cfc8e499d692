"""What the limiter asks of a store, the rule for one key, and the in-process store.

A store answers two questions: may this key send a request now (`admit`: one atomic decision over
its requests, tokens and spend), and what did a finished request cost it (`charge`: never waited
on). `LocalLimitStore` keeps everything in this process, for a gateway without Redis: each replica
then enforces every limit on its own. `RedisLimitStore` (redis_store.py) shares them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from gateway.limits.budget import Period, PeriodClock, SpendBooks
from gateway.limits.gcra import EMPTY, Meter, charge, peek, take
from gateway.limits.settings import LimitsConfig
from gateway.redis_connect import key_segment

Clock = Callable[[], float]

# Which limits refused a request (bits of `Verdict.refused`).
REQUESTS, TOKENS, BUDGET = 1, 2, 4


class KeyRule:
    """One API key's limits, with the Redis keys they live under.

    Every key of one API key shares the hash tag `{limits:<name>}`, so the admission script (which
    touches all three) runs on one Redis Cluster slot.
    """

    __slots__ = ("budget_usd", "limits", "name", "periods", "requests_key", "requests_per_minute", "spend_prefix",
                 "tokens_key", "tokens_per_minute")

    def __init__(self, name: str, limits: LimitsConfig, prefix: str = "gateway") -> None:
        self.name = name
        self.limits = limits
        self.requests_per_minute = limits.requests_per_minute
        self.tokens_per_minute = limits.tokens_per_minute
        self.budget_usd = limits.budget_usd
        self.periods = PeriodClock(limits.budget_period)
        base = f"{prefix}:{{limits:{key_segment(name)}}}"
        self.requests_key = base + ":rpm"
        self.tokens_key = base + ":tpm"
        self.spend_prefix = base + ":spend:"

    def spend_key(self, period: Period | None) -> str:
        """The key of the period's spend total (a placeholder in the same slot without a budget)."""
        return self.spend_prefix + (period.id if period is not None else "none")


class Verdict(NamedTuple):
    """One admission decision. `refused` is 0 or a mix of REQUESTS, TOKENS, BUDGET; `retry_ms` the
    wait for the rate limits that refused; `*_left` -1 where that limit is not set; `*_reset_ms` the
    time until that bucket is empty again."""

    refused: int
    retry_ms: float
    requests_left: int
    requests_reset_ms: float
    tokens_left: int
    tokens_reset_ms: float
    spent_usd: float


class LimitStore(Protocol):
    """Where the meters and spend totals live."""

    shared: bool

    async def admit(self, rule: KeyRule, period: Period | None) -> Verdict:
        """Decide, and take the request from its requests-per-minute bucket when admitted; raises
        `StoreUnavailable` when it cannot decide (the limiter then lets the request through)."""
        ...

    def charge(self, rule: KeyRule, tokens: int, usd: float, period: Period | None) -> None:
        """Book a finished request's tokens and cost; returns at once (a shared store writes later)."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def describe(self) -> str: ...


class StoreUnavailable(Exception):
    """The store could not decide in time (Redis away or slow): the limiter fails open."""


def decide(rule: KeyRule, requests: Meter, tokens: Meter, spent: float, now_ms: float) -> tuple[Verdict, Meter | None]:
    """The admission decision on the meters as they are (the admission script in redis_store.py is
    this function, line for line, after it has applied the key's pending charge); the second item is
    the requests meter to store when admitted."""
    refused, retry = 0, 0.0
    requests_left, requests_reset, tokens_left, tokens_reset = -1, 0.0, -1, 0.0
    taken: Meter | None = None
    rpm, tpm, budget = rule.requests_per_minute, rule.tokens_per_minute, rule.budget_usd
    if rpm is not None:
        outcome = take(requests, now_ms, rpm, 1.0)
        if outcome.allowed:
            taken = outcome.meter
        else:
            refused, retry = REQUESTS, outcome.retry_ms
        requests_left, requests_reset = outcome.remaining, outcome.reset_ms
    if tpm is not None:
        outcome = peek(tokens, now_ms, tpm)
        if not outcome.allowed:
            refused |= TOKENS
            retry = max(retry, outcome.retry_ms)
        tokens_left, tokens_reset = outcome.remaining, outcome.reset_ms
    if budget is not None and spent >= budget:
        refused |= BUDGET
    verdict = Verdict(refused, retry, requests_left, requests_reset, tokens_left, tokens_reset, spent)
    return verdict, taken if refused == 0 else None


class LocalLimitStore:
    """Meters and spend in this process's memory, on an injected clock (epoch seconds)."""

    shared = False

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._meters: dict[str, Meter] = {}  # by the rule's Redis key name: one naming for both stores
        self.books = SpendBooks()

    async def admit(self, rule: KeyRule, period: Period | None) -> Verdict:
        meters = self._meters
        spent = self.books.spent(rule.name, period) if period is not None else 0.0
        verdict, taken = decide(rule, meters.get(rule.requests_key, EMPTY), meters.get(rule.tokens_key, EMPTY), spent,
                                self.clock() * 1000.0)
        if taken is not None:
            meters[rule.requests_key] = taken
        return verdict

    def charge(self, rule: KeyRule, tokens: int, usd: float, period: Period | None) -> None:
        if tokens > 0 and rule.tokens_per_minute is not None:
            meter = self._meters.get(rule.tokens_key, EMPTY)
            self._meters[rule.tokens_key] = charge(meter, self.clock() * 1000.0, rule.tokens_per_minute, tokens)
        if usd > 0 and period is not None:
            self.books.add(rule.name, period, usd)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def describe(self) -> str:
        return "in this process only (no redis: every replica enforces each limit on its own)"
