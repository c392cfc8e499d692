"""Identical requests in flight together, in one gateway on fake backends: one backend call, and what
followers see when their leader fails before or after its first byte, or its client hangs up."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from gateway.errors import GatewayError, backend_failed

from .asgi_post import post
from .conftest import running_gateway
from .fakes import DONE, ScriptedStream, chat_completion_json, chunk_event

CHAT: dict[str, Any] = {"model": "my-model", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
SLOW_STREAM = [chunk_event("one "), chunk_event("two "), chunk_event("three"), DONE]


def finished_chunk() -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


def sse_payloads(raw: bytes) -> list[bytes]:
    return [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]


def text_of_stream(raw: bytes) -> str:
    text = ""
    for payload in sse_payloads(raw):
        if payload != b"[DONE]":
            for choice in msgspec.json.decode(payload).get("choices", []):
                text += choice["delta"].get("content") or ""
    return text


async def test_identical_streams_in_flight_make_one_backend_call_and_get_the_same_chunks() -> None:
    async with running_gateway() as gw:
        backend = gw.backend()
        backend.stream_factory = lambda: ScriptedStream([*SLOW_STREAM[:3], finished_chunk(), DONE], delay_s=0.05)
        stream = {**CHAT, "stream": True}
        responses = await asyncio.gather(*(post(gw, stream) for _ in range(8)), post(gw, CHAT), post(gw, CHAT))
        assert len(backend.calls) == 1
        statuses = sorted(r.headers["x-gateway-cache"] for r in responses)
        assert statuses == ["coalesced"] * 9 + ["miss"]
        streams = [r for r in responses[:8]]
        leader = next(r for r in streams if r.headers["x-gateway-cache"] == "miss")
        for response in streams:
            assert sse_payloads(response.content) == sse_payloads(leader.content)  # same chunk boundaries
        for response in responses[8:]:  # non-stream followers of a stream leader: the assembled answer
            assert response.json()["choices"][0]["message"]["content"] == "one two three"
            assert response.json()["choices"][0]["finish_reason"] == "stop"
        # Stored: the next one is a hit, without a backend call.
        hit = await post(gw, stream)
        assert hit.headers["x-gateway-cache"] == "hit" and text_of_stream(hit.content) == "one two three"
        assert len(backend.calls) == 1


async def test_a_leader_failing_before_its_first_byte_hands_the_request_to_a_follower() -> None:
    async with running_gateway() as gw:
        backend = gw.backend()
        answers: list[bytes | BaseException] = [GatewayError(400, "the backend refused it", code="bad"),
                                                chat_completion_json("second try")]

        async def slow_reply() -> bytes:
            await asyncio.sleep(0.1)  # the others arrive while the first is in flight
            answer = answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer

        async def chat(body: dict[str, Any]) -> bytes:
            backend.calls.append(("chat", body))
            return await slow_reply()

        backend.chat = chat  # type: ignore[method-assign]
        responses = await asyncio.gather(*(post(gw, CHAT) for _ in range(5)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 200, 200, 200, 400]  # only the leader's own client sees its failure
        assert len(backend.calls) == 2  # one follower became the new leader; the rest followed it
        assert {r.json()["choices"][0]["message"]["content"] for r in responses if r.status_code == 200} == {
            "second try"}


async def test_followers_that_streamed_part_of_a_failed_answer_end_with_an_error_event() -> None:
    async with running_gateway() as gw:
        backend = gw.backend()
        backend.stream_factory = lambda: ScriptedStream(
            [chunk_event("one "), chunk_event("two "), backend_failed("f1", "cut mid-way")], delay_s=0.05)
        stream = {**CHAT, "stream": True}
        responses = await asyncio.gather(*(post(gw, stream) for _ in range(4)))
        assert len(backend.calls) == 1
        for response in responses:
            payloads = sse_payloads(response.content)
            assert b"[DONE]" not in payloads
            assert b'"error"' in payloads[-1]
        # Nothing was stored: the next request goes to the backend.
        backend.stream_factory = lambda: ScriptedStream([chunk_event("whole"), finished_chunk(), DONE])
        again = await post(gw, stream)
        assert again.headers["x-gateway-cache"] == "miss" and len(backend.calls) == 2


async def test_the_answer_goes_on_for_followers_when_the_leaders_client_hangs_up() -> None:
    async with running_gateway() as gw:
        backend = gw.backend()
        backend.stream_factory = lambda: ScriptedStream(
            [chunk_event("one "), chunk_event("two "), chunk_event("three"), finished_chunk(), DONE], delay_s=0.1)
        hang_up = asyncio.Event()
        leader = asyncio.create_task(post(gw, {**CHAT, "stream": True}, hang_up=hang_up))
        await asyncio.sleep(0.05)  # the leader is in flight
        follower = asyncio.create_task(post(gw, {**CHAT, "stream": True}))
        await asyncio.sleep(0.12)
        hang_up.set()  # the leader's client goes away after its first chunk
        response = await follower
        await leader
        assert response.headers["x-gateway-cache"] == "coalesced"
        assert text_of_stream(response.content) == "one two three"
        assert sse_payloads(response.content)[-1] == b"[DONE]"
        assert len(backend.calls) == 1
        # And the answer was complete, so it was stored.
        assert (await post(gw, CHAT)).headers["x-gateway-cache"] == "hit"
