"""Token counts from responses: a body's usage, and a stream's content chunks and usage chunk."""

from __future__ import annotations

import msgspec

from gateway.api.usage import StreamTally, Usage, read_usage


def event(delta: dict[str, object] | None = None, *, text: str | None = None, usage: dict[str, int] | None = None,
          finish: str | None = None) -> bytes:
    choice: dict[str, object] = {"index": 0, "finish_reason": finish}
    if text is not None:
        choice["text"] = text
    else:
        choice["delta"] = delta or {}
    chunk: dict[str, object] = {"id": "x", "choices": [choice] if usage is None else [], "usage": usage}
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


def test_read_usage() -> None:
    body = b'{"id":"x","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}'
    assert read_usage(body) == Usage(prompt_tokens=7, completion_tokens=3)
    assert read_usage(b'{"id":"x"}') is None
    assert read_usage(b"not json") is None


def test_content_chunks_are_counted_and_empty_ones_are_not() -> None:
    tally = StreamTally()
    assert tally.feed(event({"role": "assistant", "content": ""})) == 0
    assert tally.feed(event({"content": "Hel"}) + event({"content": "lo"})) == 2
    assert tally.feed(event({"reasoning_content": "hmm"})) == 1
    assert tally.feed(event({"content": ""}, finish="stop") + b"data: [DONE]\n\n") == 0
    assert tally.output_tokens == 3 and tally.usage is None


def test_completion_text_chunks_and_the_servers_usage_wins() -> None:
    tally = StreamTally(completions=True)
    tally.feed(event(text="a") + event(text="") + event(text="b c"))
    assert tally.output_tokens == 2
    tally.feed(event(usage={"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}))
    assert tally.usage == Usage(prompt_tokens=5, completion_tokens=4) and tally.output_tokens == 4


def test_a_quote_inside_the_text_does_not_count_twice() -> None:
    tally = StreamTally()
    assert tally.feed(event({"content": 'she said "content":"x"'})) == 1
