"""Per-key limits shared through one real redis-server (issue 8, items 2 and 6).

Two `gateway serve` processes with the same config and one Redis: requests alternate between them
and the limits hold for the pair, not for each (exactly N of requests_per_minute=N succeed; tokens
charged by one process refuse the key at the other; spend likewise). Beside them, in this process:
the Redis store's Lua decides exactly what the in-process store's Python does on the same clock,
and a limiter whose Redis is away lets requests through.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from fake_openai_server import FakeOpenAIServer
from gateway_process import GatewayProcess, assert_openai_error
from redis_server import RedisServer

from gateway.auth.keys import ApiKey, key_digest
from gateway.config import RedisConfig
from gateway.limits.redis_store import RedisLimitStore
from gateway.limits.service import Limits
from gateway.limits.settings import LimitsConfig
from gateway.limits.store import KeyRule, LocalLimitStore

KEYS = {"rpm": "gw-shared-rpm", "tpm": "gw-shared-tpm", "budget": "gw-shared-budget"}
RPM = 5  # one request every 12 s after the burst: the test sends all of its requests well within that
TPM = 20  # the fake upstream's answers count 7 prompt + 4 completion tokens


def config(upstream: FakeOpenAIServer, redis_url: str) -> dict[str, Any]:
    limits = {"rpm": {"requests_per_minute": RPM}, "tpm": {"tokens_per_minute": TPM},
              "budget": {"budget_usd": 2.5, "budget_period": "day"}}
    return {
        "server": {"health_interval_s": 60},
        "redis": {"url": redis_url},
        # At this price every answer (11 tokens) costs $1.
        "backends": [{"name": "ok", "plugin": "openai_compat", "model": "ok", "url": upstream.url,
                      "cost": {"input_per_mtok": 1e6 / 11, "output_per_mtok": 1e6 / 11}}],
        "routes": [{"model": "chat", "backends": ["ok"]}],
        "auth": {"keys": [{"name": name, "sha256": key_digest(key), "limits": limits[name]}
                          for name, key in KEYS.items()]},
    }


@pytest.fixture
def pair(gateway_factory: Callable[..., GatewayProcess], fake_upstream: FakeOpenAIServer,
         redis_server: RedisServer) -> list[GatewayProcess]:
    cfg = config(fake_upstream, redis_server.url)
    return [gateway_factory(cfg, name="limits-a"), gateway_factory(cfg, name="limits-b")]


def post(gateway: GatewayProcess, key: str) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                      json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
                      headers={"authorization": f"Bearer {KEYS[key]}"})


def until(predicate: Callable[[], bool], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def meter_level(client: redis.Redis, name: str, suffix: str) -> float:
    raw = client.get(f"gateway:{{limits:{name}}}:{suffix}")
    return float(raw.split()[0]) if raw else 0.0


def test_requests_per_minute_hold_for_both_processes_together(pair: list[GatewayProcess]) -> None:
    started = time.monotonic()
    responses = [post(pair[i % 2], "rpm") for i in range(4 * RPM)]
    elapsed = time.monotonic() - started
    # Past 12 s a sixth request would rightly fit: the exact count below assumes a quicker run.
    assert elapsed < 60 / RPM, f"the requests took {elapsed:.1f}s; the count below needs under {60 / RPM:g}s"
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * RPM + [429] * (3 * RPM), statuses  # shared: not RPM per process
    for response in responses[RPM:]:
        error = assert_openai_error(response, 429, code="rate_limit_exceeded")
        assert "'rpm'" in error["message"] and KEYS["rpm"] not in response.text
        assert 1 <= int(response.headers["retry-after"]) <= 60 / RPM
        assert response.headers["x-ratelimit-limit-requests"] == str(RPM)
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert [r.headers["x-ratelimit-remaining-requests"] for r in responses[:RPM]] == \
        [str(RPM - 1 - i) for i in range(RPM)]
    assert post(pair[0], "tpm").status_code == 200  # another key is untouched
    metrics = pair[1].http().get("/metrics").text
    assert 'gateway_limits_refused_total{key="rpm",limit="requests"}' in metrics


def test_tokens_charged_by_one_process_refuse_the_key_at_the_other(pair: list[GatewayProcess],
                                                                   redis_server: RedisServer) -> None:
    client = redis_server.client()
    first = post(pair[0], "tpm")
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == str(TPM)
    # Charges are written just after the answer (never before it): wait for them to land.
    until(lambda: meter_level(client, "tpm", "tpm") >= 10, "the first answer's tokens in Redis")
    second = post(pair[1], "tpm")
    assert second.status_code == 200 and int(second.headers["x-ratelimit-remaining-tokens"]) <= TPM - 10
    until(lambda: meter_level(client, "tpm", "tpm") >= 20, "the second answer's tokens in Redis")
    for gateway in pair:  # 22 of 20 used: in debt at both
        refused = post(gateway, "tpm")
        error = assert_openai_error(refused, 429, code="rate_limit_exceeded")
        assert "tokens per minute (limit 20" in error["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 10  # 3 tokens to drain at one per 3 s


def spent(client: redis.Redis) -> float:
    keys = client.keys("gateway:{limits:budget}:spend:*")
    return int(client.get(keys[0]) or 0) / 1e9 if keys else 0.0  # kept in nano-dollars


def test_spend_is_one_budget_across_processes(pair: list[GatewayProcess], redis_server: RedisServer) -> None:
    client = redis_server.client()
    for i in range(3):
        assert post(pair[i % 2], "budget").status_code == 200
        until(lambda i=i: spent(client) >= i + 0.99, f"charge {i + 1} in Redis")  # type: ignore[misc]
    for gateway in pair:
        refused = post(gateway, "budget")
        assert_openai_error(refused, 429, code="budget_exceeded")
        assert refused.headers["x-should-retry"] == "false"
    [key] = client.keys("gateway:{limits:budget}:spend:*")
    assert 86_400 < client.ttl(key) <= 2 * 86_400  # the rest of today, and a day to read it afterwards


# -- in this process ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_the_lua_decides_exactly_what_the_python_does(redis_server: RedisServer) -> None:
    clock, rng = Clock(), random.Random(8)
    rule = KeyRule("twin", LimitsConfig(requests_per_minute=7, tokens_per_minute=300, budget_usd=5.0))
    local = LocalLimitStore(clock)
    shared = RedisLimitStore(RedisConfig(url=redis_server.url), clock=clock, wall=clock)
    # Exact boundaries first (a full burst; tokens one short of, at and past the limit; spend just under
    # and at the budget; charges carried by the next admission rather than written), then a long
    # random walk. A step is None (an admission) or (seconds to advance, tokens, USD, written at once).
    steps: list[tuple[float, int, float, bool] | None] = [None] * 9
    steps += [(0.0, 298, 0.0, True), None, (0.0, 1, 0.0, False), None, (0.2, 0, 0.0, True), None,
              (0.0, 2, 4.99, False), None, (0.0, 0, 0.01, True), None, (60.0, 0, 0.0, True), None]
    for _ in range(300):
        if rng.random() < 0.3:
            steps.append((rng.choice([0.0, 0.3, 8.57]), rng.randrange(0, 200), rng.choice([0.0, 0.05, 0.4]), True))
        else:
            steps.append(None)
    try:
        for i, step in enumerate(steps):
            period = rule.periods.at(clock.now)
            if step is not None:
                clock.now += step[0]
                local.charge(rule, step[1], step[2], period)
                shared.charge(rule, step[1], step[2], period)
                if step[3]:
                    await shared.flush()
                continue
            if i >= 21:
                clock.now += rng.choice([0.0, 0.0, 0.3, 1.7, 8.57, 20.0])
            mine, theirs = await local.admit(rule, period), await shared.admit(rule, period)
            assert theirs.refused == mine.refused, (i, mine, theirs)
            assert (theirs.requests_left, theirs.tokens_left) == (mine.requests_left, mine.tokens_left), i
            for a, b in ((theirs.retry_ms, mine.retry_ms), (theirs.requests_reset_ms, mine.requests_reset_ms),
                         (theirs.tokens_reset_ms, mine.tokens_reset_ms), (theirs.spent_usd, mine.spent_usd)):
                assert a == pytest.approx(b, rel=1e-9, abs=1e-6), (i, mine, theirs)
        assert local.books.spent("twin", rule.periods.at(clock.now)) > 5.0  # the walk went past the budget
    finally:
        await shared.aclose()


async def test_a_limiter_whose_redis_is_away_lets_requests_through(redis_server: RedisServer) -> None:
    from prometheus_client import CollectorRegistry

    from gateway.auth.settings import AuthConfig

    auth = AuthConfig(keys=[], default_limits=LimitsConfig(requests_per_minute=1))
    registry = CollectorRegistry()
    limits = Limits(auth, RedisConfig(url=redis_server.url), registry=registry)
    key = ApiKey("someone", "someone", ("*",))
    await limits.start()
    assert await limits.admit(key) is not None
    redis_server.kill()
    try:
        for _ in range(3):
            assert await limits.admit(key) is None  # through, unchecked
        assert registry.get_sample_value("gateway_limits_store_errors_total", {"op": "admission"}) == 3
    finally:
        await limits.aclose()
