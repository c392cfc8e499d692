"""Token counts read from responses, for statistics and cost, without decoding whole bodies.

A non-streaming body's `usage` is read by a Struct with that one field (msgspec skips the
rest). A stream is counted as it passes: one content-bearing chunk is one token for every
server the gateway speaks to, and a final usage chunk, when the client asked for one
(`stream_options.include_usage`), replaces the count with the server's own.
"""

from __future__ import annotations

import msgspec


class Usage(msgspec.Struct):
    """OpenAI's token counts."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class _WithUsage(msgspec.Struct):
    usage: Usage | None = None


_usage_decoder = msgspec.json.Decoder(_WithUsage)


def read_usage(body: bytes) -> Usage | None:
    """The `usage` of an OpenAI JSON body, or None when absent or unreadable."""
    try:
        return _usage_decoder.decode(body).usage
    except msgspec.DecodeError:
        return None


class StreamTally:
    """Counts what a stream carried: content chunks, and the server's usage if it sent one."""

    __slots__ = ("content_chunks", "usage")

    def __init__(self) -> None:
        self.content_chunks = 0
        self.usage: Usage | None = None

    def feed(self, events: bytes) -> int:
        """Count `events`; returns how many content chunks they held.

        A chunk carries text when its `content` (chat), `text` (completions) or
        `reasoning_content` field is a non-empty string. Counted with `bytes.count`, a few
        hundred nanoseconds a batch, where a regular expression took several times that.
        """
        found = events.count(b'"content":"') - events.count(b'"content":""')
        if b'"text":"' in events:
            found += events.count(b'"text":"') - events.count(b'"text":""')
        if b'"reasoning_content":"' in events:
            found += events.count(b'"reasoning_content":"') - events.count(b'"reasoning_content":""')
        self.content_chunks += found
        if b'"usage":{' in events:
            for line in events.split(b"\n"):
                if line.startswith(b"data: {") and b'"usage":{' in line:
                    usage = read_usage(line[6:])
                    if usage is not None:
                        self.usage = usage
        return found

    @property
    def output_tokens(self) -> int:
        if self.usage is not None and self.usage.completion_tokens:
            return self.usage.completion_tokens
        return self.content_chunks
