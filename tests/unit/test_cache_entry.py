"""The stored cache entry, the stream recorder that builds one, and the verdict on what may be stored."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.entry import ENTRY_VERSION, CachedUsage, CacheEntry, decode_entry, encode_entry
from gateway.cache.record import StreamRecorder, body_entry, unstorable_reason
from gateway.errors import GatewayError

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "llama"}


def chunk(*choices: dict[str, Any], **extra: Any) -> bytes:
    """A vLLM-style chat chunk payload."""
    return msgspec.json.encode({**HEAD, "choices": list(choices), **extra})


def delta(index: int = 0, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "logprobs": None, "finish_reason": finish}


def sse(*payloads: bytes) -> bytes:
    return b"".join(b"data: " + p + b"\n\n" for p in payloads)


ROLE = chunk(delta(role="assistant", content=""))
HELLO = chunk(delta(content="Hello"))
WORLD = chunk(delta(content=" world"))
STOP = chunk(delta(finish="stop", content=""))
LENGTH = chunk(delta(finish="length", content=""))
USAGE = chunk(usage={"prompt_tokens": 11, "total_tokens": 14, "completion_tokens": 3})


def stream_entry(*payloads: bytes, kind: str = "chat") -> CacheEntry:
    return CacheEntry(ENTRY_VERSION, kind, "b1", 1.0, events=list(payloads), offsets_ms=[0] * len(payloads))


def body(**fields: Any) -> bytes:
    return msgspec.json.encode({"id": "chatcmpl-1", "object": "chat.completion", "model": "llama", **fields})


def choice(finish: str | None, index: int = 0) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", "content": "hi"}, "finish_reason": finish}


# --- entry ----------------------------------------------------------------------------------------


def test_round_trip_stream_and_body() -> None:
    entries = [
        CacheEntry(ENTRY_VERSION, "chat", "b1", 1700000000.5, events=[HELLO, STOP], offsets_ms=[0, 12],
                   usage=CachedUsage(5, 2, exact=False)),
        CacheEntry(ENTRY_VERSION, "embedding", "b2", 2.0, body=b'{"data":[{"embedding":[0.1]}]}',
                   usage=CachedUsage(3, 0, exact=True)),
    ]
    for entry in entries:
        data = encode_entry(entry)
        assert isinstance(data, bytes)
        assert decode_entry(data) == entry


@pytest.mark.parametrize("data", [b"", b"\x00", b"garbage", b'{"version":1}', msgspec.msgpack.encode([1, "chat"]),
                                  msgspec.msgpack.encode({"a": 1}), encode_entry(CacheEntry(1, "chat", "b", 0.0))[:-3]])
def test_garbage_decodes_to_none(data: bytes) -> None:
    assert decode_entry(data) is None


def test_other_version_or_inconsistent_entry_is_none() -> None:
    assert decode_entry(encode_entry(CacheEntry(ENTRY_VERSION + 1, "chat", "b", 0.0, body=b"{}"))) is None
    assert decode_entry(encode_entry(CacheEntry(ENTRY_VERSION, "image", "b", 0.0, body=b"{}"))) is None
    assert decode_entry(encode_entry(CacheEntry(ENTRY_VERSION, "chat", "b", 0.0, events=[HELLO]))) is None


# --- recorder -------------------------------------------------------------------------------------


class StepClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_recorder_splits_events_across_calls_and_skips_comments() -> None:
    clock = StepClock()
    rec = StreamRecorder("chat", clock=clock)
    assert rec.feed(b": keep-alive\n\n" + sse(ROLE, HELLO)) == [ROLE, HELLO]
    clock.now += 0.025
    # An `event:` line and a comment inside an event, and a comment on its own, do not make payloads.
    assert rec.feed(b"event: message\ndata: " + WORLD + b"\n\n: ping\n\n") == [WORLD]
    assert not rec.done
    clock.now += 0.0101
    assert rec.feed(sse(STOP, USAGE) + b"data: [DONE]\n\n") == [STOP, USAGE]
    assert rec.done and not rec.failed and not rec.too_large
    entry = rec.finish("b1", estimated_prompt_tokens=99, now=1234.5)
    assert entry.events == [ROLE, HELLO, WORLD, STOP, USAGE]
    assert entry.offsets_ms == [0, 0, 25, 35, 35]
    assert (entry.kind, entry.backend, entry.created_at, entry.body) == ("chat", "b1", 1234.5, None)
    # The server's own counts win over the gateway's estimate.
    assert entry.usage == CachedUsage(11, 3, exact=True)
    assert decode_entry(encode_entry(entry)) == entry


def test_recorder_multi_line_data_and_no_space_after_colon() -> None:
    rec = StreamRecorder("chat")
    assert rec.feed(b'data:{"a":\ndata: 1}\n\n') == [b'{"a":\n1}']


def test_recorder_first_offset_is_first_event_not_construction() -> None:
    clock = StepClock()
    rec = StreamRecorder("chat", clock=clock)
    clock.now += 5.0
    assert rec.feed(b": comment only\n\n") == []
    clock.now += 1.0
    rec.feed(sse(HELLO))
    clock.now += 0.2
    rec.feed(sse(WORLD))
    assert rec.finish("b", estimated_prompt_tokens=0, now=0).offsets_ms == [0, 200]


def test_recorder_error_event_fails_the_stream() -> None:
    rec = StreamRecorder("chat")
    error = GatewayError(502, "backend went away", type="api_error").sse_event()
    found = rec.feed(sse(HELLO) + error)
    assert found == [HELLO, error[6:-2]]
    assert rec.failed and not rec.done
    assert unstorable_reason(rec.finish("b", estimated_prompt_tokens=1, now=0), store_length=True) == "error"


def test_recorder_counts_tokens_without_usage_chunk() -> None:
    rec = StreamRecorder("chat")
    tool = chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}]))
    rec.feed(sse(ROLE, HELLO, WORLD, tool, STOP, chunk(usage=None)) + b"data: [DONE]\n\n")
    # Role and finish chunks carry no output; content and tool-call pieces are one token each.
    assert rec.finish("b", estimated_prompt_tokens=42, now=0).usage == CachedUsage(42, 3, exact=False)


def test_recorder_counts_completion_text() -> None:
    rec = StreamRecorder("completion")
    texts = [{"index": 0, "text": t, "logprobs": None, "finish_reason": None} for t in ("a", "b", "")]
    rec.feed(sse(*(chunk(c) for c in texts)))
    assert rec.finish("b", estimated_prompt_tokens=7, now=0).usage == CachedUsage(7, 2, exact=False)


def test_recorder_stops_keeping_after_max_bytes() -> None:
    rec = StreamRecorder("chat", max_bytes=len(ROLE) + len(HELLO))
    assert rec.feed(sse(ROLE, HELLO)) == [ROLE, HELLO]
    assert not rec.too_large
    assert rec.feed(sse(WORLD)) == [WORLD]  # still handed on to followers
    assert rec.too_large
    rec.feed(sse(STOP, USAGE) + b"data: [DONE]\n\n")
    assert rec.done
    entry = rec.finish("b", estimated_prompt_tokens=0, now=0)
    assert entry.events == [] and entry.offsets_ms == []
    assert entry.usage == CachedUsage(11, 3, exact=True)  # usage is kept apart, so it survives


def test_recorder_takes_the_last_usage() -> None:
    rec = StreamRecorder("chat")
    early = chunk(delta(content="x"), usage={"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12})
    rec.feed(sse(early, USAGE, chunk(usage=None)))
    assert rec.finish("b", estimated_prompt_tokens=0, now=0).usage == CachedUsage(11, 3, exact=True)


# --- body entry -----------------------------------------------------------------------------------


def test_body_entry_usage() -> None:
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    entry = body_entry("chat", body(choices=[choice("stop")], usage=usage), "b1", now=9.0)
    assert (entry.kind, entry.backend, entry.created_at, entry.events) == ("chat", "b1", 9.0, [])
    assert entry.usage == CachedUsage(4, 2, exact=True)
    assert body_entry("chat", body(choices=[choice("stop")]), "b1", now=0).usage is None
    embedding = body_entry("embedding", b'{"data":[],"usage":{"prompt_tokens":3,"total_tokens":3}}', "b", now=0)
    assert embedding.usage == CachedUsage(3, 0, exact=True)


# --- what may be stored ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payloads", "store_length", "reason"),
    [
        ([ROLE, HELLO, STOP, USAGE], False, None),
        ([ROLE, HELLO, LENGTH, USAGE], False, "finish_reason length"),
        ([ROLE, HELLO, LENGTH, USAGE], True, None),
        ([ROLE, HELLO, WORLD], True, "truncated"),
        ([ROLE, HELLO, GatewayError(500, "boom").body()], True, "error"),
        ([ROLE, b'{"object":"error","message":"oops","type":"x","code":500}'], True, "error"),
        ([USAGE], True, "empty"),
        ([], True, "empty"),
        ([b"not json"], True, "unreadable"),
        # Two choices: the second never finished.
        ([chunk(delta(0, content="a"), delta(1, content="b")), chunk(delta(0, finish="stop"))], True, "truncated"),
        ([chunk(delta(0, content="a")), chunk(delta(1, finish="stop")), chunk(delta(0, finish="stop"))], True,
         None),
        # A finish reason is not undone by a later chunk for the same choice without one.
        ([STOP, HELLO], True, None),
    ],
)
def test_unstorable_stream(payloads: list[bytes], store_length: bool, reason: str | None) -> None:
    assert unstorable_reason(stream_entry(*payloads), store_length=store_length) == reason


@pytest.mark.parametrize(
    ("kind", "data", "store_length", "reason"),
    [
        ("chat", body(choices=[choice("stop")]), False, None),
        ("chat", body(choices=[choice("stop"), choice(None, 1)]), True, "truncated"),
        ("chat", body(choices=[choice("length")]), False, "finish_reason length"),
        ("chat", body(choices=[choice("length")]), True, None),
        ("chat", body(choices=[]), True, "empty"),
        ("chat", GatewayError(400, "bad").body(), True, "error"),
        ("completion", body(choices=[{"index": 0, "text": "x", "finish_reason": "stop"}]), False, None),
        ("completion", body(choices=[{"index": 0, "text": "x", "finish_reason": None}]), False, "truncated"),
        ("embedding", b'{"object":"list","data":[{"embedding":[0.5],"index":0}]}', False, None),
        ("embedding", b'{"object":"list","data":[]}', False, "empty"),
        ("embedding", b'{"error":{"message":"no"}}', False, "error"),
        ("chat", b"<html>", True, "unreadable"),
    ],
)
def test_unstorable_body(kind: str, data: bytes, store_length: bool, reason: str | None) -> None:
    entry = body_entry(kind, data, "b", now=0)
    assert unstorable_reason(entry, store_length=store_length) == reason


def test_entry_with_nothing_is_empty() -> None:
    assert unstorable_reason(CacheEntry(ENTRY_VERSION, "chat", "b", 0.0), store_length=True) == "empty"


@given(st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=8))
def test_recorder_batching_does_not_change_the_payloads(sizes: list[int]) -> None:
    """However a stream's events are batched into feed calls, the same payloads come out and are kept."""
    payloads = [chunk(delta(content=f"t{i}")) for i in range(sum(sizes))]
    rec = StreamRecorder("chat")
    returned: list[bytes] = []
    start = 0
    for size in sizes:
        returned += rec.feed(sse(*payloads[start:start + size]))
        start += size
    rec.feed(b"data: [DONE]\n\n")
    entry = rec.finish("b", estimated_prompt_tokens=0, now=0)
    assert returned == entry.events == payloads
    assert entry.usage == CachedUsage(0, len(payloads), exact=False)
