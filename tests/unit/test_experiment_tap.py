"""What a shadow compares: the served answer's text read back from what the client was sent."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.experiments.tap import ServeTap, answer_of


def sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    out = b"".join(b"data: " + msgspec.json.encode(c) + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


def delta(content: str | None = None, index: int = 0, **extra: Any) -> dict[str, Any]:
    body = {"role": "assistant"} if content is None and not extra else {}
    if content is not None:
        body["content"] = content
    body.update(extra)
    return {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": index, "delta": body}]}


def test_a_chat_stream_reads_as_its_first_choice_text() -> None:
    raw = sse(delta(), delta("Hel"), delta("lo", index=1), delta("lo"), {"choices": [], "usage": {"total_tokens": 3}})
    assert answer_of("chat", raw, stream=True) == "Hello"


def test_a_completion_stream_reads_its_text() -> None:
    raw = sse({"choices": [{"index": 0, "text": "one "}]}, {"choices": [{"index": 0, "text": "two"}]})
    assert answer_of("completion", raw, stream=True) == "one two"


def test_cut_or_failed_streams_give_none() -> None:
    assert answer_of("chat", sse(delta("Hi"), done=False), stream=True) is None
    assert answer_of("chat", sse(delta("Hi"), {"error": {"message": "boom"}}), stream=True) is None


def test_tool_call_streams_read_like_the_assembled_body() -> None:
    call = {"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"b": 1, "a": 2}'}}
    raw = sse(delta(tool_calls=[call]))
    body = msgspec.json.encode({"choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": [call]}}]})
    assert answer_of("chat", raw, stream=True) == answer_of("chat", body, stream=False)
    assert '"name": "f"' in (answer_of("chat", raw, stream=True) or "")


async def test_the_tap_adds_its_header_and_keeps_the_body_only_when_mirroring() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    tap = ServeTap(0.0, stream=True, headers=[(b"x-gateway-experiment", b"e=control")], capture=True)
    out = tap.wrap(send)
    await out({"type": "http.response.start", "status": 200, "headers": [(b"a", b"b")]})
    await out({"type": "http.response.body", "body": sse(delta("Hi")), "more_body": False})
    assert sent[0]["headers"] == [(b"a", b"b"), (b"x-gateway-experiment", b"e=control")]
    assert tap.status == 200 and tap.answer("chat") == "Hi"
    quiet = ServeTap(0.0, stream=True, headers=[], capture=False)
    await quiet.wrap(send)({"type": "http.response.start", "status": 200, "headers": []})
    await quiet.wrap(send)({"type": "http.response.body", "body": sse(delta("Hi"))})
    assert quiet.answer("chat") is None
