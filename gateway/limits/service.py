"""Per-key limits on the request path: `Limits.admit` before a request, `Limits.charge` after it.

Limits apply to API keys, so only with an `auth` section: without one the gateway cannot tell
callers apart and limits nothing. A key's requests per minute are taken at admission; its tokens
and spend are booked when the request is over (`charge`, a `GatewayState.request_sinks` entry) and
checked before the next one. See gcra.py for the rate semantics and budget.py for spend periods.

With a `redis` section the meters live in Redis and every replica shares them (one round trip per
admission); without one, in this process, and each replica enforces every limit on its own.
Either way a limiter that cannot reach its store lets requests through (fail open) and counts it.

A refusal is OpenAI's 429: `{"error": {"type": "rate_limit_exceeded", "code": "rate_limit_exceeded"}}`
naming the limit and the key's name (never the key), with `retry-after` (whole seconds),
`retry-after-ms`, and the `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers, which
admitted requests carry too. An exhausted budget is a 429 `insufficient_quota`/`budget_exceeded`
with `x-should-retry: false` (retrying cannot help before the period rolls over).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from gateway.auth.keys import ApiKey
from gateway.auth.settings import AuthConfig
from gateway.config import RedisConfig
from gateway.errors import GatewayError
from gateway.limits.budget import Period
from gateway.limits.metrics import LimitsMetrics
from gateway.limits.settings import LimitsConfig
from gateway.limits.store import (
    BUDGET,
    REQUESTS,
    TOKENS,
    Clock,
    KeyRule,
    LimitStore,
    LocalLimitStore,
    StoreUnavailable,
    Verdict,
)

if TYPE_CHECKING:
    from gateway.api.request_record import RequestRecord

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

# Answers that no backend produced for this request cost it no tokens (their price is 0 as well).
_FREE = frozenset(("hit", "coalesced"))


def duration_text(ms: float) -> str:
    """A wait as OpenAI writes it in x-ratelimit-reset-*: `250ms`, `6s`, `1m30s`, `2h0m0s`."""
    if ms < 1000:
        return f"{math.ceil(ms)}ms"
    if ms < 59_999.5:
        return f"{round(ms / 1000, 3):g}s"
    seconds = round(ms / 1000, 3)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


def _whole_seconds(ms: float) -> int:
    return max(1, math.ceil((ms - 1e-6) / 1000))


def rate_headers(rule: KeyRule, verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* headers for the key's rate limits (none for a limit it does not have)."""
    headers: list[tuple[bytes, bytes]] = []
    if rule.requests_per_minute is not None:
        headers += [(b"x-ratelimit-limit-requests", b"%d" % rule.requests_per_minute),
                    (b"x-ratelimit-remaining-requests", b"%d" % verdict.requests_left),
                    (b"x-ratelimit-reset-requests", duration_text(verdict.requests_reset_ms).encode())]
    if rule.tokens_per_minute is not None:
        headers += [(b"x-ratelimit-limit-tokens", b"%d" % rule.tokens_per_minute),
                    (b"x-ratelimit-remaining-tokens", b"%d" % verdict.tokens_left),
                    (b"x-ratelimit-reset-tokens", duration_text(verdict.tokens_reset_ms).encode())]
    return headers


class Quota:
    """An admitted request's rate-limit headers, added to whatever response it gets."""

    __slots__ = ("headers",)

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers

    def wrap(self, send: Send) -> Send:
        """`send`, adding the headers to the response's start."""
        extra = self.headers

        async def send_with_quota(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        return send_with_quota


class Limits:
    """The per-key limiter of one gateway process; see the module doc."""

    def __init__(
        self,
        auth: AuthConfig | None,
        redis: RedisConfig | None,
        *,
        registry: CollectorRegistry | None = None,
        clock: Clock = time.time,
        store: LimitStore | None = None,
        previous: Limits | None = None,
        key_prefix: str = "gateway",
    ) -> None:
        """`clock` (epoch seconds) dates budget periods, and drives the in-process store; `previous`, the
        limiter of the state a config reload replaces, hands over its in-process meters."""
        self.wall = clock
        self.key_prefix = key_prefix
        self.metrics = LimitsMetrics.of(registry) if registry is not None else None
        self._rules: dict[str, KeyRule | None] = {}
        self._default: LimitsConfig | None = None
        self._limited = 0
        self.configure(auth)
        if store is None:
            if redis is not None and self.enabled:
                from gateway.limits.redis_store import RedisLimitStore  # redis-py only where it is used

                store = RedisLimitStore(redis, wall=clock, on_error=self._store_error)
            elif redis is None and previous is not None and isinstance(previous.store, LocalLimitStore):
                store = previous.store  # a reload must not hand every key a fresh minute
            else:
                store = LocalLimitStore(clock)
        self.store: LimitStore = store

    def configure(self, auth: AuthConfig | None) -> None:
        """Take the keys' limits from `auth`: a key's own `limits`, else `auth.default_limits`, which
        also covers keys the config does not list (made at run time in the key store)."""
        rules: dict[str, KeyRule | None] = {}
        default: LimitsConfig | None = None
        if auth is not None:
            if auth.default_limits is not None and auth.default_limits.any:
                default = auth.default_limits
            for key in auth.keys:
                limits = key.limits if key.limits is not None else default
                rules[key.name] = KeyRule(key.name, limits, self.key_prefix) if limits is not None and limits.any \
                    else None
        self._rules, self._default = rules, default
        self._limited = sum(rule is not None for rule in rules.values())

    @property
    def enabled(self) -> bool:
        """Whether any key is limited (without, the handler skips the limiter entirely)."""
        return self._limited > 0 or self._default is not None

    def rule(self, name: str) -> KeyRule | None:
        """The rule for the key named `name`, None when it is not limited."""
        try:
            return self._rules[name]
        except KeyError:
            if self._default is None:
                return None
            rule = self._rules[name] = KeyRule(name, self._default, self.key_prefix)
            return rule

    def describe(self) -> str:
        if not self.enabled:
            return "no per-key limits"
        default = ", defaults for the others" if self._default is not None else ""
        return f"per-key limits on {self._limited} configured key(s){default}, {self.store.describe()}"

    async def start(self) -> None:
        if self.enabled:
            await self.store.start()

    async def aclose(self) -> None:
        await self.store.aclose()

    # -- the request path ----------------------------------------------------------------------

    async def admit(self, key: ApiKey) -> Quota | None:
        """Take one request from `key`'s limits: a 429 `GatewayError` when a limit refuses it; else the
        headers its response should carry (None when the key has no rate limits, or the store could
        not be asked: then the request goes through unchecked)."""
        rule = self.rule(key.name)
        if rule is None:
            return None
        period = rule.periods.at(self.wall()) if rule.budget_usd is not None else None
        try:
            verdict = await self.store.admit(rule, period)
        except StoreUnavailable:
            self._store_error("admission")
            return None
        if verdict.refused:
            raise self._refusal(rule, verdict, period)
        if rule.requests_per_minute is None and rule.tokens_per_minute is None:
            return None
        return Quota(rate_headers(rule, verdict))

    def charge(self, record: RequestRecord) -> None:
        """Book a finished request's tokens and cost to its key (a request sink: returns at once)."""
        name = record.key_name
        if name is None:
            return
        rule = self.rule(name)
        if rule is None:
            return
        tokens = 0
        if rule.tokens_per_minute is not None and record.cache not in _FREE:
            tokens = record.input_tokens + record.output_tokens
        usd = record.cost_usd if rule.budget_usd is not None else 0.0
        if tokens <= 0 and usd <= 0:
            return
        period = rule.periods.at(self.wall()) if rule.budget_usd is not None else None
        self.store.charge(rule, tokens, usd, period)

    # -- refusals ------------------------------------------------------------------------------

    def _store_error(self, op: str) -> None:
        if self.metrics is not None:
            self.metrics.store_errors.labels(op).inc()

    def _refused(self, rule: KeyRule, limit: str) -> None:
        if self.metrics is not None:
            self.metrics.refused.labels(rule.name, limit).inc()

    def _refusal(self, rule: KeyRule, verdict: Verdict, period: Period | None) -> GatewayError:
        name = rule.name
        if verdict.refused & BUDGET:
            self._refused(rule, "budget")
            return self._budget_refusal(rule, verdict, period)
        which = []
        if verdict.refused & REQUESTS:
            which.append(f"requests per minute (limit {rule.requests_per_minute})")
            self._refused(rule, "requests")
        if verdict.refused & TOKENS:
            which.append(f"tokens per minute (limit {rule.tokens_per_minute}, used up by its recent requests)")
            self._refused(rule, "tokens")
        seconds = _whole_seconds(verdict.retry_ms)
        # Float noise (a microsecond's worth) must not add a whole millisecond or second.
        headers = {"retry-after": str(seconds), "retry-after-ms": str(max(1, math.ceil(verdict.retry_ms - 1e-6)))}
        headers.update((k.decode(), v.decode()) for k, v in rate_headers(rule, verdict))
        return GatewayError(
            429, f"Rate limit reached for API key '{name}' on {' and '.join(which)}. Try again in {seconds}s.",
            type="rate_limit_exceeded", code="rate_limit_exceeded", headers=headers,
        )

    def _budget_refusal(self, rule: KeyRule, verdict: Verdict, period: Period | None) -> GatewayError:
        budget = rule.budget_usd
        headers = {"x-should-retry": "false"}
        headers.update((k.decode(), v.decode()) for k, v in rate_headers(rule, verdict))
        spent = f"${verdict.spent_usd:.4f} of its ${budget:g}"
        left = period.seconds_left(self.wall()) if period is not None else None
        if left is None:
            message = (f"Spend budget exhausted for API key '{rule.name}': {spent} total budget is used up; "
                       "it needs a larger budget_usd to continue.")
        else:
            headers["retry-after"] = str(left)
            message = (f"Spend budget exhausted for API key '{rule.name}': {spent} budget for this "
                       f"{rule.limits.budget_period} (UTC) is used up; it renews in {duration_text(left * 1000)}.")
        return GatewayError(429, message, type="insufficient_quota", code="budget_exceeded", headers=headers)
