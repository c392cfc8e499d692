"""`LlamaCppSlotTarget` and `LlamaCppDrafter` on the wire, against a tiny aiohttp stand-in for llama-server's
/props, /tokenize and /completion: the request bodies (pinned slots, neutral greedy sampling) and every way an
answer can fail (status, body, shape, a cut stream) become `TargetFailed` / `DraftFailed` with the reason."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.speculative.interfaces import DraftFailed, TargetFailed
from gateway.speculative.llamacpp_draft import LlamaCppDrafter
from gateway.speculative.llamacpp_target import LlamaCppSlotTarget


class FakeLlamaServer:
    """Answers /props (3 slots, eos "<|im_end|>"), /tokenize ("<|im_end|>" -> [2]) and /completion by
    `self.completion(body)`; records every /completion body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.completion: Callable[[dict[str, Any]], Any] = self.greedy
        self.total_slots = 3

    @staticmethod
    def greedy(body: dict[str, Any]) -> web.Response:
        # "Model": the next token is the prompt's last + 1.
        return web.json_response({"tokens": [body["prompt"][-1] + 1], "stop_type": "limit",
                                  "timings": {"prompt_n": 1}})

    async def props(self, _: web.Request) -> web.Response:
        return web.json_response({"total_slots": self.total_slots, "eos_token": "<|im_end|>"})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"tokens": [2] if body["content"] == "<|im_end|>" else [99, 98]})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        answer = self.completion(body)
        if isinstance(answer, list):  # a stream: raw SSE lines
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for line in answer:
                await response.write(line.encode())
            return response
        assert isinstance(answer, web.StreamResponse)
        return answer

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/props", self.props)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/completion", self.handle)
        return app


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeLlamaServer, str]]:
    server = FakeLlamaServer()
    test_server = TestServer(server.app(), host="127.0.0.1")
    await test_server.start_server()
    try:
        yield server, str(test_server.make_url("")).rstrip("/")
    finally:
        await test_server.close()


def sse(*chunks: str) -> list[str]:
    return [f"data: {chunk}\n\n" for chunk in chunks]


async def test_verify_sends_one_pinned_greedy_request_per_prefix(fake: tuple[FakeLlamaServer, str]) -> None:
    server, url = fake
    target = LlamaCppSlotTarget(url, first_slot=1, slots=2)
    try:
        verification = await target.verify([10, 11], [12, 40])
    finally:
        await target.aclose()
    assert verification.argmax == [12, 13]  # slots=2: max_draft 1, so the prefix with 40 is not sent
    assert target.max_draft == 1 and target.eos_ids == {2}
    assert sorted((b["id_slot"], b["prompt"]) for b in server.bodies) == [(1, [10, 11]), (2, [10, 11, 12])]
    for body in server.bodies:
        assert body["n_predict"] == 1 and body["return_tokens"] is True and body["cache_prompt"] is True
        assert body["temperature"] == 0 and body["top_k"] == 1 and body["samplers"] == ["top_k", "temperature"]
        assert body["repeat_penalty"] == 1.0 and body["dry_multiplier"] == 0 and body["stream"] is False
    assert target.verify_requests == 2 and target.verify_evaluated == 2


async def test_slots_default_to_the_servers_and_are_capped_by_them(fake: tuple[FakeLlamaServer, str]) -> None:
    _, url = fake
    target = LlamaCppSlotTarget(url, slots=10)
    try:
        await target.load_props()
        assert target.slots == 3 and target.max_draft == 2
    finally:
        await target.aclose()
    with pytest.raises(TargetFailed, match="none from first_slot 3"):
        await LlamaCppSlotTarget(url, first_slot=3).load_props()


@pytest.mark.parametrize(("answer", "reason"), [
    (lambda: web.json_response({"error": {"code": 503, "message": "no slot available"}}, status=503),
     "verify prefix 0 answered 503: no slot available"),
    (lambda: web.Response(text="{not json", content_type="application/json"), "answer is not JSON"),
    (lambda: web.json_response({"content": "hi", "stop_type": "limit"}), "carries no integer 'tokens' list"),
    (lambda: web.json_response({"tokens": ["a"]}), "carries no integer 'tokens' list"),
    (lambda: web.json_response({"error": {"message": "boom"}}), "failed: boom"),
])
async def test_a_bad_verify_answer_raises_target_failed(
    fake: tuple[FakeLlamaServer, str], answer: Callable[[], web.Response], reason: str,
) -> None:
    server, url = fake
    server.completion = lambda body: answer()
    target = LlamaCppSlotTarget(url, slots=1)
    try:
        with pytest.raises(TargetFailed, match=reason):
            await target.verify([1], [])
    finally:
        await target.aclose()


async def test_one_failing_prefix_fails_the_verify(fake: tuple[FakeLlamaServer, str]) -> None:
    server, url = fake
    server.completion = lambda body: (web.json_response({"error": {"message": "slot busy"}}, status=503)
                                      if len(body["prompt"]) == 3 else FakeLlamaServer.greedy(body))
    target = LlamaCppSlotTarget(url)
    try:
        with pytest.raises(TargetFailed, match="verify prefix 2 answered 503: slot busy"):
            await target.verify([1], [2, 3])
    finally:
        await target.aclose()


async def test_an_eos_answer_teaches_its_last_token(fake: tuple[FakeLlamaServer, str]) -> None:
    server, url = fake
    server.completion = lambda body: web.json_response({"tokens": [7], "stop_type": "eos"})
    target = LlamaCppSlotTarget(url, slots=1)
    try:
        assert (await target.verify([1], [])).argmax == [7]
        assert target.eos_ids == {2, 7}
    finally:
        await target.aclose()


async def test_generate_streams_ids_and_learns_an_end_token_before_yielding_it(
    fake: tuple[FakeLlamaServer, str],
) -> None:
    server, url = fake
    server.completion = lambda body: sse(
        '{"content": "Hi", "tokens": [5], "stop": false}',
        '{"content": "", "tokens": [9], "stop": false}',
        '{"content": "", "tokens": [], "stop": true, "stop_type": "eos"}',
    )
    target = LlamaCppSlotTarget(url, slots=2, first_slot=4)
    try:
        seen = [(token, token in target.eos_ids) async for token in target.generate([1, 2], 8)]
    finally:
        await target.aclose()
    assert seen == [(5, False), (9, True)]
    body = server.bodies[-1]
    assert body["stream"] is True and body["id_slot"] == 4 and body["n_predict"] == 8


async def test_tokens_a_stream_withheld_mid_character_are_fetched_again(fake: tuple[FakeLlamaServer, str]) -> None:
    """Measured on llama-server: a generation that stops inside a multi-byte character never streams that
    character's tokens (the final chunk still counts them in tokens_predicted)."""
    server, url = fake

    def answer(body: dict[str, Any]) -> Any:
        if body["stream"]:
            return sse('{"content": "a", "tokens": [5], "stop": false}',
                       '{"content": "", "tokens": [], "stop": true, "stop_type": "limit", "tokens_predicted": 3}')
        return web.json_response({"tokens": [240, 241], "stop_type": "limit"})

    server.completion = answer
    target = LlamaCppSlotTarget(url, slots=2)
    try:
        got = [token async for token in target.generate([1, 2], 3)]
    finally:
        await target.aclose()
    assert got == [5, 240, 241]
    again = server.bodies[-1]
    assert again["prompt"] == [1, 2, 5] and again["n_predict"] == 2 and again["stream"] is False


@pytest.mark.parametrize(("lines", "reason"), [
    (sse('{"content": "Hi", "tokens": [5], "stop": false}'), "ended without its final chunk"),
    (['error: {"code": 500, "message": "decode failed"}\n\n'], "target stream failed"),
    (sse("{broken"), "malformed stream chunk"),
    (sse('{"content": "Hi", "stop": false}'), "carries no integer 'tokens' list"),
])
async def test_a_bad_stream_raises_target_failed(
    fake: tuple[FakeLlamaServer, str], lines: list[str], reason: str,
) -> None:
    server, url = fake
    server.completion = lambda body: lines
    target = LlamaCppSlotTarget(url, slots=1)
    try:
        with pytest.raises(TargetFailed, match=reason):
            _ = [token async for token in target.generate([1], 4)]
    finally:
        await target.aclose()


async def test_drafter_asks_for_k_greedy_tokens_on_its_slot_and_keeps_an_end_token(
    fake: tuple[FakeLlamaServer, str],
) -> None:
    server, url = fake
    server.completion = lambda body: web.json_response({"tokens": [4, 5, 2], "stop_type": "eos"})
    drafter = LlamaCppDrafter(url, id_slot=7)
    try:
        assert await drafter.draft([1, 2, 3], 4) == [4, 5, 2]
        assert await drafter.draft([1, 2, 3], 0) == [] and await drafter.draft([], 4) == []
    finally:
        await drafter.aclose()
    assert len(server.bodies) == 1
    body = server.bodies[0]
    assert body["prompt"] == [1, 2, 3] and body["n_predict"] == 4 and body["id_slot"] == 7
    assert body["temperature"] == 0 and body["top_k"] == 1 and body["return_tokens"] is True


async def test_a_failing_draft_raises_draft_failed(fake: tuple[FakeLlamaServer, str]) -> None:
    server, url = fake
    server.completion = lambda body: web.json_response({"error": {"message": "context full"}}, status=400)
    drafter = LlamaCppDrafter(url)
    try:
        with pytest.raises(DraftFailed, match="draft call answered 400: context full"):
            await drafter.draft([1], 3)
    finally:
        await drafter.aclose()
