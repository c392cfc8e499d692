"""Replaying a cache entry as a body or a stream, whichever shape the request wants."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.cache.entry import ENTRY_VERSION, CachedUsage, CacheEntry
from gateway.cache.record import StreamRecorder, body_entry
from gateway.cache.replay import StreamReplay, mark_usage_cached, pacing_delays, replay_body, replay_stream

CHAT_HEAD = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1700000000, "model": "llama"}
TEXT_HEAD = {"id": "cmpl-9", "object": "text_completion", "created": 1700000000, "model": "llama"}
USAGE = {"prompt_tokens": 11, "total_tokens": 14, "completion_tokens": 3}
DONE = b"data: [DONE]\n\n"


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


def chat_chunk(*choices: dict[str, Any], **extra: Any) -> bytes:
    return encode({**CHAT_HEAD, "choices": list(choices), **extra})


def delta(index: int = 0, finish: str | None = None, logprobs: Any = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "logprobs": logprobs, "finish_reason": finish}


def text_chunk(text: str, finish: str | None = None, logprobs: Any = None, index: int = 0, **extra: Any) -> bytes:
    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish, "stop_reason": None}
    return encode({**TEXT_HEAD, "choices": [choice], **extra})


def recorded(kind: str, *payloads: bytes, prompt_estimate: int = 0) -> CacheEntry:
    """An entry as the recorder makes it from a stream carrying `payloads` then [DONE]."""
    rec = StreamRecorder(kind)
    rec.feed(b"".join(b"data: " + p + b"\n\n" for p in payloads) + DONE)
    assert rec.done
    return rec.finish("b1", estimated_prompt_tokens=prompt_estimate, now=1700000001.0)


def token_lp(token: str) -> dict[str, Any]:
    return {"token": token, "logprob": -0.5, "bytes": list(token.encode()), "top_logprobs": []}


CHAT_STREAM = [
    chat_chunk(delta(role="assistant", content="")),
    chat_chunk(delta(content="Hello", logprobs={"content": [token_lp("Hello")]})),
    chat_chunk(delta(content=",")),
    chat_chunk(delta(content=" world", logprobs={"content": [token_lp(" world")]})),
    chat_chunk({**delta(finish="stop", content=""), "stop_reason": None}),
    chat_chunk(usage=USAGE),
]
CACHED_USAGE = {**USAGE, "prompt_tokens_details": {"cached_tokens": 11}, "cached": True}


def sse_payloads(events: list[bytes]) -> list[bytes]:
    """The data payloads of a replayed SSE body (empty slots skipped), checking each event's framing."""
    assert events[-1] == DONE
    payloads = []
    for event in events[:-1]:
        if event:
            assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n\n") == 1
            payloads.append(event[6:-2])
    return payloads


def assert_paceable(entry: CacheEntry) -> None:
    """Whatever the request's include_usage, the delays line up one to one with the replayed events."""
    delays = pacing_delays(entry)
    for include_usage in (True, False):
        assert len(delays) == len(replay_stream(entry, include_usage=include_usage))


def as_stream_entry(kind: str, payloads: list[bytes], usage: CachedUsage | None) -> CacheEntry:
    return CacheEntry(ENTRY_VERSION, kind, "b", 5.0, events=payloads, offsets_ms=[0] * len(payloads), usage=usage)


# --- usage ----------------------------------------------------------------------------------------


def test_mark_usage_cached_keeps_counts_and_details() -> None:
    usage = {**USAGE, "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 2}}
    marked = mark_usage_cached(usage)
    assert marked == {**USAGE, "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 11}, "cached": True}
    assert usage["prompt_tokens_details"] == {"audio_tokens": 0, "cached_tokens": 2}  # the original is untouched
    assert mark_usage_cached({**USAGE, "prompt_tokens_details": None})["prompt_tokens_details"] == {
        "cached_tokens": 11}


# --- body from a stored stream --------------------------------------------------------------------


def test_chat_stream_assembles_into_a_body() -> None:
    body = msgspec.json.decode(replay_body(recorded("chat", *CHAT_STREAM)))
    assert body == {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "llama",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, world"},
            "logprobs": {"content": [token_lp("Hello"), token_lp(" world")]},
            "finish_reason": "stop",
            "stop_reason": None,
        }],
        "usage": CACHED_USAGE,
    }
    parsed = ChatCompletion.model_validate_json(replay_body(recorded("chat", *CHAT_STREAM)))
    assert parsed.choices[0].message.content == "Hello, world"
    assert parsed.usage is not None and parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 11


def test_tool_call_deltas_merge() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    stream = [
        chat_chunk(delta(role="assistant", content="")),
        chat_chunk(delta(reasoning_content="Need the ")),
        chat_chunk(delta(reasoning_content="weather.")),
        chat_chunk(delta(tool_calls=[{"index": 0, **call}])),
        chat_chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}])),
        chat_chunk(delta(tool_calls=[{"index": 1, "id": "call_2", "type": "function",
                                      "function": {"name": "get_time", "arguments": "{}"}}])),
        chat_chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}])),
        chat_chunk(delta(finish="tool_calls")),
    ]
    entry = recorded("chat", *stream, prompt_estimate=20)
    out = replay_body(entry)
    message = msgspec.json.decode(out)["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,
        "reasoning_content": "Need the weather.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    }
    parsed = ChatCompletion.model_validate_json(out)
    assert parsed.choices[0].finish_reason == "tool_calls"
    # No usage chunk: the gateway's count (2 reasoning + 4 tool-call pieces), total added, marked cached.
    assert msgspec.json.decode(out)["usage"] == {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26,
                                                  "prompt_tokens_details": {"cached_tokens": 20}, "cached": True}


def test_several_choices_assemble_in_index_order() -> None:
    stream = [
        chat_chunk(delta(1, role="assistant", content=""), delta(0, role="assistant", content="")),
        chat_chunk(delta(1, content="B")),
        chat_chunk(delta(0, content="A")),
        chat_chunk(delta(1, finish="length")),
        chat_chunk(delta(0, content="a", finish="stop")),
    ]
    body = msgspec.json.decode(replay_body(recorded("chat", *stream)))
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "Aa", "stop"), (1, "B", "length")]


def test_completion_stream_assembles_with_logprobs() -> None:
    def lp(token: str, offset: int) -> dict[str, Any]:
        return {"tokens": [token], "token_logprobs": [-0.1], "top_logprobs": [{token: -0.1}], "text_offset": [offset]}

    stream = [text_chunk("Once", logprobs=lp("Once", 0)), text_chunk(" upon", logprobs=lp(" upon", 4)),
              text_chunk("", finish="length"), encode({**TEXT_HEAD, "choices": [], "usage": USAGE})]
    out = replay_body(recorded("completion", *stream))
    body = msgspec.json.decode(out)
    assert body["object"] == "text_completion"
    assert body["choices"] == [{
        "index": 0,
        "text": "Once upon",
        "logprobs": {"tokens": ["Once", " upon"], "token_logprobs": [-0.1, -0.1],
                     "top_logprobs": [{"Once": -0.1}, {" upon": -0.1}], "text_offset": [0, 4]},
        "finish_reason": "length",
        "stop_reason": None,
    }]
    assert body["usage"] == CACHED_USAGE
    assert Completion.model_validate_json(out).choices[0].text == "Once upon"


def test_stored_body_comes_back_with_usage_marked() -> None:
    original = {"id": "chatcmpl-1", "object": "chat.completion", "created": 3, "model": "llama",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "logprobs": None,
                             "finish_reason": "stop"}], "usage": USAGE, "system_fingerprint": None}
    entry = body_entry("chat", encode(original), "b", now=0)
    assert msgspec.json.decode(replay_body(entry)) == {**original, "usage": CACHED_USAGE}
    # A body without usage gets the entry's counts.
    bare = CacheEntry(ENTRY_VERSION, "chat", "b", 0.0, body=encode({**original, "usage": None}),
                      usage=CachedUsage(11, 3, exact=False))
    assert msgspec.json.decode(replay_body(bare)) == {**original, "usage": CACHED_USAGE}
    # Embeddings keep their vectors bit for bit.
    vectors = b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-2.5e-05,3]}],' \
              b'"model":"e5","usage":{"prompt_tokens":2,"total_tokens":2}}'
    out = replay_body(body_entry("embedding", vectors, "b", now=0))
    assert b'"embedding":[0.1,-2.5e-05,3]' in out
    assert msgspec.json.decode(out)["usage"] == {"prompt_tokens": 2, "total_tokens": 2, "cached": True,
                                                 "prompt_tokens_details": {"cached_tokens": 2}}


def test_replay_body_of_nothing_raises() -> None:
    with pytest.raises(ValueError):
        replay_body(CacheEntry(ENTRY_VERSION, "chat", "b", 0.0))


# --- stream from a stored stream ------------------------------------------------------------------


def test_stream_replay_keeps_payloads_and_boundaries() -> None:
    entry = recorded("chat", *CHAT_STREAM)
    events = replay_stream(entry, include_usage=True)
    payloads = sse_payloads(events)
    assert payloads[:-1] == CHAT_STREAM[:-1]  # byte for byte
    assert msgspec.json.decode(payloads[-1]) == {**CHAT_HEAD, "choices": [], "usage": CACHED_USAGE}
    for payload in payloads:
        ChatCompletionChunk.model_validate_json(payload)


def test_stream_replay_drops_usage_chunk_without_include_usage() -> None:
    entry = recorded("chat", *CHAT_STREAM)
    events = replay_stream(entry, include_usage=False)
    assert sse_payloads(events) == CHAT_STREAM[:-1]
    # The dropped chunk and the unused usage slot stay as empty elements, so pacing still lines up.
    assert events[-3:] == [b"", b"", DONE]
    assert_paceable(entry)


def test_stream_replay_synthesizes_usage_when_absent() -> None:
    entry = as_stream_entry("chat", CHAT_STREAM[:-1], CachedUsage(11, 3, exact=True))
    events = replay_stream(entry, include_usage=True)
    payloads = sse_payloads(events)
    assert payloads[:-1] == CHAT_STREAM[:-1]
    assert msgspec.json.decode(payloads[-1]) == {**CHAT_HEAD, "choices": [], "usage": CACHED_USAGE}
    ChatCompletionChunk.model_validate_json(payloads[-1])
    assert sse_payloads(replay_stream(entry, include_usage=False)) == CHAT_STREAM[:-1]
    assert_paceable(entry)


def test_continuous_usage_chunks_pass_unchanged() -> None:
    running = chat_chunk(delta(content="x"), usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    for include_usage in (True, False):
        assert StreamReplay(include_usage=include_usage).event(running) == b"data: " + running + b"\n\n"


def test_live_replay_event_by_event() -> None:
    """A follower reads the leader's payloads as they arrive, then closes with the finished entry."""
    replay = StreamReplay(include_usage=True)
    sent = b"".join(replay.event(p) for p in CHAT_STREAM[:-1])
    assert sent == b"".join(b"data: " + p + b"\n\n" for p in CHAT_STREAM[:-1])
    closing = replay.end(as_stream_entry("chat", CHAT_STREAM[:-1], CachedUsage(11, 3, exact=True)))
    assert closing.endswith(DONE) and b'"cached":true' in closing
    # Once the usage chunk passed, end adds only [DONE].
    passed = StreamReplay(include_usage=True)
    assert b'"cached":true' in passed.event(CHAT_STREAM[-1])
    assert passed.end(recorded("chat", *CHAT_STREAM)) == DONE


def test_pacing_delays_follow_offsets() -> None:
    entry = as_stream_entry("chat", CHAT_STREAM, None)
    entry.offsets_ms = [0, 40, 40, 55, 100, 101]
    assert pacing_delays(entry) == [0.0, 0.04, 0.0, 0.015, 0.045, 0.001, 0.0, 0.0]
    assert_paceable(entry)
    assert_paceable(as_stream_entry("chat", CHAT_STREAM[:-1], CachedUsage(1, 2, exact=False)))
    assert_paceable(as_stream_entry("chat", CHAT_STREAM[:-1], None))


# --- stream from a stored body --------------------------------------------------------------------


def reassemble(kind: str, events: list[bytes]) -> dict[str, Any]:
    """Read a synthesized stream back the way the assembler reads a recorded one."""
    return msgspec.json.decode(replay_body(as_stream_entry(kind, sse_payloads(events), None)))


CHAT_BODY = {
    "id": "chatcmpl-7", "object": "chat.completion", "created": 1700000005, "model": "llama",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hi there", "reasoning_content": "greet"},
         "logprobs": {"content": [token_lp("Hi"), token_lp(" there")]}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
         "logprobs": None, "finish_reason": "tool_calls"},
    ],
    "usage": USAGE,
}


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_body_replays_as_a_stream(include_usage: bool) -> None:
    entry = body_entry("chat", encode(CHAT_BODY), "b", now=0)
    events = replay_stream(entry, include_usage=include_usage)
    chunks = [ChatCompletionChunk.model_validate_json(p) for p in sse_payloads(events)]
    assert {(c.id, c.created, c.model, c.object) for c in chunks} == {
        ("chatcmpl-7", 1700000005, "llama", "chat.completion.chunk")}
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    assert (chunks[-1].usage is not None) == include_usage
    body = reassemble("chat", events)
    assert [c["message"] for c in body["choices"]] == [
        {"role": "assistant", "content": "Hi there", "reasoning_content": "greet"},
        {"role": "assistant", "content": None, "tool_calls": CHAT_BODY["choices"][1]["message"]["tool_calls"]},
    ]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "tool_calls"]
    assert body["choices"][0]["logprobs"] == CHAT_BODY["choices"][0]["logprobs"]
    if include_usage:
        assert body["usage"] == CACHED_USAGE
    assert set(pacing_delays(entry)) == {0.0}
    assert_paceable(entry)


def test_completion_body_replays_as_a_stream() -> None:
    original = {"id": "cmpl-3", "object": "text_completion", "created": 8, "model": "llama",
                "choices": [{"index": 0, "text": "Once upon", "logprobs": None, "finish_reason": "length"}]}
    entry = CacheEntry(ENTRY_VERSION, "completion", "b", 0.0, body=encode(original),
                       usage=CachedUsage(11, 3, exact=False))
    events = replay_stream(entry, include_usage=True)
    payloads = sse_payloads(events)
    for payload in payloads:
        chunk = msgspec.json.decode(payload)
        assert chunk["object"] == "text_completion"
        if all(c["finish_reason"] for c in chunk["choices"]):
            # The SDK's type (also used for streamed completions) only accepts a set finish_reason.
            Completion.model_validate_json(payload)
        else:
            assert [set(c) for c in chunk["choices"]] == [{"index", "text", "logprobs", "finish_reason"}]
    body = reassemble("completion", events)
    assert body["choices"][0]["text"] == "Once upon" and body["choices"][0]["finish_reason"] == "length"
    # The body had no usage: the stream's usage chunk is built from the entry's counts.
    assert body["usage"] == CACHED_USAGE
    assert msgspec.json.decode(payloads[-1])["choices"] == []
    assert_paceable(entry)
    assert_paceable(body_entry("completion", encode({**original, "choices": [{**original["choices"][0], "text": ""}]}),
                               "b", now=0))


def test_embeddings_never_stream() -> None:
    entry = body_entry("embedding", b'{"data":[{"embedding":[1.0]}]}', "b", now=0)
    with pytest.raises(ValueError):
        replay_stream(entry, include_usage=False)
    with pytest.raises(ValueError):
        pacing_delays(entry)


def test_unreadable_stored_stream_raises_value_error() -> None:
    with pytest.raises(ValueError):
        replay_body(as_stream_entry("chat", [b"{not json"], None))


def test_empty_chat_answer_replays_as_a_stream() -> None:
    original = {"id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "llama",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}
    entry = body_entry("chat", encode(original), "b", now=0)
    events = replay_stream(entry, include_usage=True)
    for payload in sse_payloads(events):
        ChatCompletionChunk.model_validate_json(payload)
    body = reassemble("chat", events)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert_paceable(entry)
