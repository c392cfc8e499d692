"""Per-key limits and backend concurrency through the real app (issue 8, item 2): a key over its
requests, tokens or budget gets OpenAI's 429 with Retry-After and x-ratelimit-* headers while other
keys go on; a backend at its concurrency limit queues requests up to `max_queue` and sheds the rest
with a 503 Retry-After, and the gateway keeps serving."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import pytest

from gateway.auth.keys import key_digest

from .conftest import GatewayUnderTest, running_gateway
from .fakes import BACKEND_MODEL, assert_error_shape, chat_completion_json

TEAM_A, TEAM_B = "gw-limits-team-a", "gw-limits-team-b"
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def config(limits: dict[str, Any] | None = None, **backend: Any) -> dict[str, Any]:
    # The fake answers with 1 prompt + 1 completion token: at these prices every answer costs $1.
    return {
        "backends": [{"name": "f1", "plugin": "fake", "model": BACKEND_MODEL,
                      "cost": {"input_per_mtok": 500_000, "output_per_mtok": 500_000}, **backend}],
        "routes": [{"model": "chat", "backends": ["f1"]}],
        "auth": {"keys": [{"name": "team-a", "sha256": key_digest(TEAM_A), "limits": limits or {}},
                          {"name": "team-b", "sha256": key_digest(TEAM_B)}]},
    }


async def post(gw: GatewayUnderTest, key: str = TEAM_A, body: dict[str, Any] = CHAT) -> Any:
    return await gw.client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    error = assert_error_shape(msgspec.json.decode(response.content))
    assert error["code"] == code, error
    return error


async def test_a_key_over_its_requests_per_minute_gets_a_429_and_other_keys_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_gateway(config({"requests_per_minute": 3})) as gw:
        for left in ("2", "1", "0"):
            ok = await post(gw)
            assert ok.status_code == 200
            assert ok.headers["x-ratelimit-limit-requests"] == "3"
            assert ok.headers["x-ratelimit-remaining-requests"] == left
        refused = await post(gw)
        error = error_of(refused, 429, "rate_limit_exceeded")
        assert error["type"] == "rate_limit_exceeded"
        assert "API key 'team-a'" in error["message"] and "requests per minute (limit 3)" in error["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 20  # the next request fits in 20 s at 3 a minute
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert len(gw.backend().calls) == 3  # the refused one never reached a backend
        for _ in range(5):
            other = await post(gw, TEAM_B)
            assert other.status_code == 200 and "x-ratelimit-limit-requests" not in other.headers
        metrics = (await gw.client.get("/metrics")).text
        assert 'gateway_limits_refused_total{key="team-a",limit="requests"} 1.0' in metrics
    assert TEAM_A not in refused.text and TEAM_A not in caplog.text


async def test_streams_carry_the_rate_headers_and_count_their_tokens() -> None:
    async with running_gateway(config({"tokens_per_minute": 4})) as gw:
        first = await post(gw, body={**CHAT, "stream": True})
        assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == "4"
        assert first.text.endswith("data: [DONE]\n\n")
        second = await post(gw)  # the stream's 3 tokens (a prompt token, two chunks) are booked: 1 left
        assert second.status_code == 200 and second.headers["x-ratelimit-remaining-tokens"] == "1"
        error = error_of(await post(gw), 429, "rate_limit_exceeded")  # 5 of 4 used: in debt
        assert "tokens per minute (limit 4" in error["message"]


async def test_a_key_past_its_budget_is_refused_until_the_period_ends() -> None:
    async with running_gateway(config({"budget_usd": 2.5, "budget_period": "day"})) as gw:
        for _ in range(3):
            response = await post(gw)
            assert response.status_code == 200 and response.headers["x-gateway-cost-usd"] == "1.00000000"
        refused = await post(gw)
        error = error_of(refused, 429, "budget_exceeded")
        assert error["type"] == "insufficient_quota" and "$3.0000 of its $2.5 budget for this day" in error["message"]
        assert refused.headers["x-should-retry"] == "false"
        assert 1 <= int(refused.headers["retry-after"]) <= 86_400
        assert (await post(gw, TEAM_B)).status_code == 200


async def test_a_full_backend_queues_up_to_max_queue_and_sheds_the_rest_with_retry_after() -> None:
    async with running_gateway(config(max_concurrency=1, max_queue=2, queue_timeout_s=30)) as gw:
        backend = gw.backend()
        release = asyncio.Event()
        started = []

        async def slow_chat(body: dict[str, Any]) -> bytes:
            started.append(body)
            await release.wait()
            return chat_completion_json()

        async def send() -> Any:
            return await gw.client.post("/v1/chat/completions", json=CHAT,
                                        headers={"authorization": f"Bearer {TEAM_B}"})

        backend.chat = slow_chat  # type: ignore[method-assign]
        requests = [asyncio.create_task(send()) for _ in range(3)]
        for _ in range(500):
            if gw.state.dispatcher.slots.depth("f1") == 2:
                break
            await asyncio.sleep(0.01)
        assert len(started) == 1 and gw.state.dispatcher.slots.depth("f1") == 2  # one runs, two wait
        shed = await send()
        error = error_of(shed, 503, "overloaded")
        assert "concurrency limit with a full queue" in error["message"] and shed.headers["retry-after"] == "1"
        release.set()
        assert [r.status_code for r in await asyncio.gather(*requests)] == [200, 200, 200]
        assert len(started) == 3
        assert (await post(gw, TEAM_B)).status_code == 200  # still serving
        metrics = (await gw.client.get("/metrics")).text
        assert 'gateway_backend_shed_total{backend="f1"} 1.0' in metrics
        assert 'gateway_backend_queue_depth{backend="f1"} 0.0' in metrics
