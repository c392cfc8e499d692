"""Per-key limits (issue 8, item 2), the arithmetic: GCRA for requests and tokens per minute, token
debt, spend budgets and their periods, and the limiter on its in-process store, all on fake clocks."""

from __future__ import annotations

import calendar
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from gateway.api.request_record import RequestRecord
from gateway.auth.keys import ApiKey
from gateway.auth.settings import AuthConfig
from gateway.errors import GatewayError
from gateway.limits.budget import PeriodClock, period_at
from gateway.limits.gcra import EMPTY, Meter, charge, peek, take
from gateway.limits.service import Limits, duration_text
from gateway.limits.settings import LimitsConfig
from gateway.limits.store import KeyRule, LocalLimitStore, StoreUnavailable, Verdict
from gateway.redis_connect import key_segment

NOW_MS = 1_700_000_000_000.0  # an epoch time in ms, as large as real ones


# -- GCRA -----------------------------------------------------------------------------------------


def take_n(meter: Meter, now_ms: float, limit: int, n: int) -> Meter:
    for _ in range(n):
        outcome = take(meter, now_ms, limit, 1.0)
        assert outcome.allowed
        meter = outcome.meter
    return meter


@pytest.mark.parametrize("limit", [1, 7, 60, 1000])
def test_a_full_minute_may_come_at_once_and_the_next_waits_exactly_one_interval(limit: int) -> None:
    meter = EMPTY
    for i in range(limit):
        outcome = take(meter, NOW_MS, limit, 1.0)
        assert outcome.allowed and outcome.remaining == limit - i - 1
        meter = outcome.meter
    refused = take(meter, NOW_MS, limit, 1.0)
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_ms == pytest.approx(60_000 / limit, rel=1e-12)
    assert refused.meter.level == meter.level  # a refused request takes nothing


def test_after_the_burst_the_rate_is_steady_and_the_wait_is_exact() -> None:
    meter = take_n(EMPTY, NOW_MS, 60, 60)  # one a second, sixty at once
    assert take(meter, NOW_MS + 400, 60, 1.0).retry_ms == pytest.approx(600.0)
    later = take(meter, NOW_MS + 1000, 60, 1.0)
    assert later.allowed and later.remaining == 0 and later.reset_ms == pytest.approx(60_000.0)
    assert take(later.meter, NOW_MS + 1000, 60, 1.0).retry_ms == pytest.approx(1000.0)
    # A quiet minute drains everything: the whole burst is back.
    assert take(later.meter, NOW_MS + 61_000, 60, 1.0).remaining == 59


def test_a_clock_going_back_drains_nothing() -> None:
    meter = take_n(EMPTY, NOW_MS, 10, 10)
    refused = take(meter, NOW_MS - 5000, 10, 1.0)
    assert not refused.allowed and refused.retry_ms == pytest.approx(6000.0)
    assert refused.meter.at_ms == NOW_MS  # the later time is kept


def test_tokens_are_charged_after_the_fact_and_a_key_in_debt_waits_it_off() -> None:
    limit = 1000  # tokens per minute: one drains every 60 ms
    assert peek(EMPTY, NOW_MS, limit).allowed
    meter = charge(EMPTY, NOW_MS, limit, 2500)  # one long answer: 1500 tokens past a full minute
    check = peek(meter, NOW_MS, limit)
    assert not check.allowed and check.remaining == 0
    assert check.retry_ms == pytest.approx((2500 + 1 - 1000) * 60.0)  # until one token fits again
    assert not peek(meter, NOW_MS + 90_000, limit).allowed  # back at exactly a full minute: still no room
    assert peek(meter, NOW_MS + 90_060, limit).allowed
    assert peek(meter, NOW_MS + 90_060, limit).meter.level == pytest.approx(999.0)
    # A peek takes nothing: checking twice is the same as checking once.
    assert peek(peek(meter, NOW_MS + 90_060, limit).meter, NOW_MS + 90_060, limit).allowed


def test_charging_into_a_bucket_that_has_room_leaves_the_rest() -> None:
    meter = charge(EMPTY, NOW_MS, 1000, 300)
    assert peek(meter, NOW_MS, 1000).remaining == 700
    assert peek(meter, NOW_MS + 6000, 1000).remaining == 800  # 100 tokens drained in 6 s


# -- budget periods --------------------------------------------------------------------------------


def utc(*fields: int) -> float:
    return float(calendar.timegm((*fields, 0, 0, 0)[:9]))


def test_periods_are_utc_days_months_or_forever() -> None:
    now = utc(2025, 3, 14, 15, 9, 26)
    day, month, total = period_at("day", now), period_at("month", now), period_at("total", now)
    assert (day.id, day.starts_at, day.ends_at) == ("d20250314", utc(2025, 3, 14, 0, 0, 0), utc(2025, 3, 15, 0, 0, 0))
    assert (month.id, month.ends_at) == ("m202503", utc(2025, 4, 1, 0, 0, 0))
    assert (total.id, total.ends_at, total.seconds_left(now), total.ttl_s(now)) == ("total", None, None, 0)
    assert period_at("month", utc(2025, 12, 31, 23, 59, 59)).ends_at == utc(2026, 1, 1, 0, 0, 0)
    assert day.seconds_left(now) == 8 * 3600 + 50 * 60 + 34
    assert day.ttl_s(now) == 8 * 3600 + 50 * 60 + 34 + 86_400  # kept a day past the end


def test_the_period_clock_rolls_over_and_follows_a_clock_stepped_back() -> None:
    periods = PeriodClock("day")
    assert periods.at(utc(2025, 1, 31, 23, 59, 59)).id == "d20250131"
    assert periods.at(utc(2025, 2, 1, 0, 0, 0)).id == "d20250201"
    assert periods.at(utc(2025, 1, 30, 12, 0, 0)).id == "d20250130"


def test_duration_text_reads_like_openais_reset_headers() -> None:
    assert [duration_text(ms) for ms in (0, 250.2, 1000, 6000, 90_500, 7_200_000)] == \
        ["0ms", "251ms", "1s", "6s", "1m30.5s", "2h0m0s"]


def test_key_names_cannot_break_out_of_their_hash_tag() -> None:
    rule = KeyRule("a}:b{c%", LimitsConfig(requests_per_minute=1))
    assert rule.requests_key == "gateway:{limits:a%7D%3Ab%7Bc%25}:rpm"
    assert key_segment("team-a") == "team-a"
    # Every key of one API key hashes to the same cluster slot: the same text between { and }.
    tags = {k[k.index("{") + 1:k.index("}")] for k in (rule.requests_key, rule.tokens_key, rule.spend_key(None))}
    assert len(tags) == 1


# -- the limiter on its in-process store -----------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def auth(**limits: Any) -> AuthConfig:
    raw = {"keys": [{"name": "team-a", "sha256": "a" * 64, "limits": limits},
                    {"name": "team-b", "sha256": "b" * 64}]}
    return msgspec.convert(raw, AuthConfig)


TEAM_A, TEAM_B = ApiKey("team-a", "team-a", ("*",)), ApiKey("team-b", "team-b", ("*",))


async def refusal(limits: Limits, key: ApiKey = TEAM_A) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await limits.admit(key)
    assert info.value.status == 429
    return info.value


def finished(key: str, *, tokens: int = 0, usd: float = 0.0, cache: str = "") -> RequestRecord:
    record = RequestRecord(b"r1", "chat", 0.0)
    record.key_name, record.input_tokens, record.output_tokens, record.cost_usd, record.cache = \
        key, tokens // 2, tokens - tokens // 2, usd, cache
    return record


async def test_requests_per_minute_refuse_with_retry_after_and_openai_headers() -> None:
    clock = Clock(NOW_MS / 1000)
    registry = CollectorRegistry()
    limits = Limits(auth(requests_per_minute=3), None, clock=clock, registry=registry)
    assert limits.enabled and "in this process only" in limits.describe()
    quotas = [await limits.admit(TEAM_A) for _ in range(3)]
    assert [dict(q.headers)[b"x-ratelimit-remaining-requests"] for q in quotas if q] == [b"2", b"1", b"0"]
    assert dict(quotas[0].headers)[b"x-ratelimit-limit-requests"] == b"3"  # type: ignore[union-attr]
    clock.now += 0.5
    err = await refusal(limits)
    assert err.type == "rate_limit_exceeded" and err.code == "rate_limit_exceeded"
    assert "'team-a'" in err.message and "requests per minute (limit 3)" in err.message
    assert err.headers["retry-after"] == "20" and err.headers["retry-after-ms"] == "19500"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-limit-requests"] == "3"
    assert await limits.admit(TEAM_B) is None  # another key, no limits of its own
    clock.now += 19.5
    assert await limits.admit(TEAM_A) is not None
    assert registry.get_sample_value("gateway_limits_refused_total", {"key": "team-a", "limit": "requests"}) == 1


async def test_tokens_per_minute_refuse_a_key_in_debt_until_it_has_drained() -> None:
    clock = Clock(NOW_MS / 1000)
    limits = Limits(auth(tokens_per_minute=600), None, clock=clock)
    quota = await limits.admit(TEAM_A)
    assert quota is not None and dict(quota.headers)[b"x-ratelimit-remaining-tokens"] == b"600"
    limits.charge(finished("team-a", tokens=900))  # 300 tokens of debt: a token drains every 100 ms
    err = await refusal(limits)
    assert "tokens per minute (limit 600" in err.message
    assert err.headers["retry-after-ms"] == "30100" and err.headers["retry-after"] == "31"
    clock.now += 30.1
    quota = await limits.admit(TEAM_A)
    assert quota is not None and dict(quota.headers)[b"x-ratelimit-remaining-tokens"] == b"1"


async def test_a_token_refusal_takes_nothing_from_the_request_bucket() -> None:
    clock = Clock(NOW_MS / 1000)
    limits = Limits(auth(requests_per_minute=2, tokens_per_minute=100), None, clock=clock)
    await limits.admit(TEAM_A)
    limits.charge(finished("team-a", tokens=500))
    for _ in range(5):
        await refusal(limits)
    clock.now += 60 * 4.01  # the 400 tokens of debt drained; 2 requests' worth drained long ago
    quota = await limits.admit(TEAM_A)
    assert quota is not None and dict(quota.headers)[b"x-ratelimit-remaining-requests"] == b"1"


async def test_cache_hits_and_followers_cost_no_tokens() -> None:
    limits = Limits(auth(tokens_per_minute=100), None, clock=Clock(NOW_MS / 1000))
    limits.charge(finished("team-a", tokens=5000, cache="hit"))
    limits.charge(finished("team-a", tokens=5000, cache="coalesced"))
    assert await limits.admit(TEAM_A) is not None
    limits.charge(finished("team-a", tokens=5000, cache="miss"))
    await refusal(limits)


async def test_a_daily_budget_refuses_once_spent_and_renews_at_midnight_utc() -> None:
    clock = Clock(utc(2025, 3, 14, 22, 0, 0))
    limits = Limits(auth(budget_usd=1.0, budget_period="day"), None, clock=clock)
    assert await limits.admit(TEAM_A) is None  # no rate limits: no rate headers
    limits.charge(finished("team-a", usd=0.6))
    await limits.admit(TEAM_A)
    limits.charge(finished("team-a", usd=0.6))  # admitted under budget, charged over it: kept on the books
    err = await refusal(limits)
    assert err.type == "insufficient_quota" and err.code == "budget_exceeded"
    assert "'team-a'" in err.message and "$1.2000 of its $1 budget for this day" in err.message
    assert err.headers["retry-after"] == str(2 * 3600) and err.headers["x-should-retry"] == "false"
    clock.now = utc(2025, 3, 15, 0, 0, 1)
    assert await limits.admit(TEAM_A) is None


async def test_a_monthly_budget_rolls_over_with_the_year_and_a_total_one_never_does() -> None:
    clock = Clock(utc(2025, 12, 31, 23, 0, 0))
    monthly = Limits(auth(budget_usd=2.0), None, clock=clock)  # month is the default period
    monthly.charge(finished("team-a", usd=2.0))
    assert (await refusal(monthly)).headers["retry-after"] == "3600"
    clock.now = utc(2026, 1, 1, 0, 0, 0)
    assert await monthly.admit(TEAM_A) is None
    total = Limits(auth(budget_usd=2.0, budget_period="total"), None, clock=clock)
    total.charge(finished("team-a", usd=2.5))
    err = await refusal(total)
    assert "retry-after" not in err.headers and err.headers["x-should-retry"] == "false"
    assert "total budget is used up" in err.message
    clock.now += 400 * 86_400
    await refusal(total)


async def test_default_limits_cover_keys_without_their_own_and_an_empty_mapping_is_unlimited() -> None:
    config = msgspec.convert({
        "keys": [{"name": "own", "sha256": "a" * 64, "limits": {"requests_per_minute": 2}},
                 {"name": "free", "sha256": "b" * 64, "limits": {}},
                 {"name": "plain", "sha256": "c" * 64}],
        "default_limits": {"requests_per_minute": 1},
    }, AuthConfig)
    limits = Limits(config, None, clock=Clock(NOW_MS / 1000))
    for name, allowed in (("own", 2), ("plain", 1), ("made-at-run-time", 1)):
        key = ApiKey(name, name, ("*",))
        for _ in range(allowed):
            await limits.admit(key)
        await refusal(limits, key)
    for _ in range(10):
        assert await limits.admit(ApiKey("free", "free", ("*",))) is None
    assert not Limits(None, None).enabled
    assert not Limits(msgspec.convert({"keys": [{"name": "x", "sha256": "a" * 64}]}, AuthConfig), None).enabled


async def test_a_reload_keeps_the_in_process_meters() -> None:
    clock = Clock(NOW_MS / 1000)
    first = Limits(auth(requests_per_minute=1), None, clock=clock)
    await first.admit(TEAM_A)
    second = Limits(auth(requests_per_minute=1), None, clock=clock, previous=first)
    await refusal(second)


class DownStore(LocalLimitStore):
    async def admit(self, rule: KeyRule, period: Any) -> Verdict:
        raise StoreUnavailable("redis at nowhere:6379 is unavailable")


async def test_a_store_that_cannot_answer_lets_requests_through_and_counts_it() -> None:
    registry = CollectorRegistry()
    limits = Limits(auth(requests_per_minute=1), None, store=DownStore(), registry=registry)
    for _ in range(3):
        assert await limits.admit(TEAM_A) is None
    assert registry.get_sample_value("gateway_limits_store_errors_total", {"op": "admission"}) == 3


# -- configuration ---------------------------------------------------------------------------------


def test_limits_are_validated_with_their_key_paths() -> None:
    from gateway.config import ConfigError, parse_config

    from .fakes import BACKEND_MODEL, fake_registry

    raw = {
        "backends": [{"name": "f1", "plugin": "fake", "model": BACKEND_MODEL, "max_queue": -1,
                      "queue_timeout_s": 0},
                     {"name": "f2", "plugin": "fake", "model": BACKEND_MODEL, "max_queue": 3}],
        "routes": [{"model": "*", "backends": ["f1", "f2"]}],
        "auth": {"keys": [{"name": "a", "sha256": "a" * 64,
                           "limits": {"requests_per_minute": 0, "tokens_per_minute": -5, "budget_usd": 0}}],
                 "default_limits": {"budget_usd": -1}},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={}, validators=fake_registry().validators())
    assert set(info.value.problems) >= {
        "auth.keys[0].limits.requests_per_minute: must be at least 1 (leave it out for no limit)",
        "auth.keys[0].limits.tokens_per_minute: must be at least 1 (leave it out for no limit)",
        "auth.keys[0].limits.budget_usd: must be positive (leave it out for no budget; revoke a key to stop it)",
        "auth.default_limits.budget_usd: must be positive (leave it out for no budget; revoke a key to stop it)",
        "backends[0].max_queue: must not be negative",
        "backends[0].queue_timeout_s: must be positive",
        "backends[1].max_queue: must be 0 without max_concurrency (requests queue for a concurrency slot)",
    }
    raw["auth"] = {"keys": [{"name": "a", "sha256": "a" * 64, "limits": {"budget_period": "week", "rpm": 3}}]}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={}, validators=fake_registry().validators())
    assert any(p.startswith("auth.keys[0].limits") for p in info.value.problems), info.value.problems
