"""Turning an answer into a cache entry: a stream recorded as it passes, a body taken whole, and the verdict
on whether the result may be stored at all.

Recording runs on every chunk of a cached stream, so `StreamRecorder.feed` only splits bytes; JSON is decoded
once, when the stream has ended (`finish`) or when the entry is judged (`unstorable_reason`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from gateway.api.usage import read_usage
from gateway.cache.entry import ENTRY_VERSION, CachedUsage, CacheEntry

__all__ = ["StreamRecorder", "body_entry", "unstorable_reason"]

MiB = 1024 * 1024
_DONE = b"[DONE]"


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[Any] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    finish_reason: str | None = None
    delta: _Delta | None = None
    text: str | None = None


class _Answer(msgspec.Struct):
    """The parts of a chunk or body that decide storability; msgspec skips everything else unparsed."""

    choices: list[_Choice] | None = None
    data: list[msgspec.Raw] | None = None  # embeddings: counted, never parsed
    error: Any = None
    object: str | None = None


_answer_decoder = msgspec.json.Decoder(_Answer)


def _payload_of(block: bytes) -> bytes | None:
    """The data of one SSE event (its `data:` lines joined), or None for an event with no data (a comment)."""
    lines = [line for line in block.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    # The SSE rule: one optional space after the colon belongs to the framing, not the data.
    return b"\n".join(line[6:] if line.startswith(b"data: ") else line[5:] for line in lines)


# How an error event's payload starts: ours and vLLM's `{"error": ...}`, or vLLM's older `{"object": "error"}`.
_ERROR_STARTS = (b'{"error"', b'{"object":"error"')


def stream_failed(raw: bytes) -> bool:
    """Whether SSE bytes hold an error event (ours, or vLLM's in either form)."""
    return any(b"data: " + start in raw for start in _ERROR_STARTS)


class StreamRecorder:
    """Records a stream's events as the client gets them, for the cache and for followers.

    `done` is set once `[DONE]` has passed, `failed` once an error event has, and `too_large` once the
    payloads have passed `max_bytes` in all: from then on they are still returned, but no longer kept
    (the entry could not be stored anyway, and a long stream must not pin its whole body in memory).
    """

    __slots__ = ("_clock", "_events", "_first_at", "_kept_bytes", "_offsets", "_usage_payload", "done",
                 "failed", "kind", "max_bytes", "too_large")

    def __init__(self, kind: str, *, clock: Callable[[], float] = time.monotonic, max_bytes: int = 1 * MiB) -> None:
        self.kind = kind
        self._clock = clock
        self.max_bytes = max_bytes
        self.done = False
        self.failed = False
        self.too_large = False
        self._events: list[bytes] = []
        self._offsets: list[int] = []
        self._kept_bytes = 0
        self._first_at: float | None = None
        # Kept apart from the events so the usage survives `too_large`.
        self._usage_payload: bytes | None = None

    def feed(self, events: bytes) -> list[bytes]:
        """Record one or more complete SSE events as sent to the client; their data payloads, in order.

        `[DONE]` is noted but not returned; comment and `event:` lines are skipped. Every payload found in
        one call gets the same offset: they reached the client together.
        """
        found: list[bytes] = []
        for block in events.split(b"\n\n"):
            if not block:
                continue
            # The usual event is one `data: ` line: no need to look at it line by line.
            if block.startswith(b"data: ") and b"\n" not in block:
                payload = block[6:]
            else:
                data = _payload_of(block)
                if data is None:
                    continue
                payload = data
            if payload == _DONE:
                self.done = True
                continue
            if payload.startswith(_ERROR_STARTS):
                self.failed = True
            # `"usage":{` skips `"usage":null`; a server that puts a space after colons is matched too.
            elif b'"usage"' in payload and (b'"usage":{' in payload or b'"usage": {' in payload):
                self._usage_payload = payload
            found.append(payload)
        if found and not self.too_large:
            self._keep(found)
        return found

    def _keep(self, payloads: list[bytes]) -> None:
        now = self._clock()
        if self._first_at is None:
            self._first_at = now
        self._kept_bytes += sum(map(len, payloads))
        if self._kept_bytes > self.max_bytes:
            self.too_large = True
            self._events = []
            self._offsets = []
            return
        offset = round((now - self._first_at) * 1000)
        self._events.extend(payloads)
        self._offsets.extend([offset] * len(payloads))

    def _content_chunks(self) -> int:
        """How many recorded chunks carried output (text, reasoning or a tool call's piece), per choice.

        One such chunk counts as one token, the same rule the gateway's stream tally uses for every server.
        """
        count = 0
        for payload in self._events:
            try:
                answer = _answer_decoder.decode(payload)
            except msgspec.DecodeError:
                continue
            for choice in answer.choices or ():
                delta = choice.delta
                if choice.text or (
                    delta is not None
                    and (delta.content or delta.reasoning_content or delta.reasoning or delta.tool_calls)
                ):
                    count += 1
        return count

    def finish(self, backend: str, *, estimated_prompt_tokens: int, now: float) -> CacheEntry:
        """The entry for what was recorded; call it once the stream has ended.

        Its usage is the server's own when a chunk carried one (the last such chunk: vLLM's continuous
        usage grows chunk by chunk), otherwise the gateway's count with `estimated_prompt_tokens`.
        """
        usage: CachedUsage | None = None
        if self._usage_payload is not None:
            read = read_usage(self._usage_payload)
            if read is not None:
                usage = CachedUsage(read.prompt_tokens, read.completion_tokens, exact=True)
        if usage is None:
            usage = CachedUsage(estimated_prompt_tokens, self._content_chunks(), exact=False)
        return CacheEntry(
            version=ENTRY_VERSION,
            kind=self.kind,
            backend=backend,
            created_at=now,
            events=list(self._events),
            offsets_ms=list(self._offsets),
            usage=usage,
        )


def body_entry(kind: str, body: bytes, backend: str, *, now: float) -> CacheEntry:
    """The entry for a non-stream answer (chat, completion or embedding JSON), with the body's usage if any."""
    read = read_usage(body)
    usage = CachedUsage(read.prompt_tokens, read.completion_tokens, exact=True) if read is not None else None
    return CacheEntry(version=ENTRY_VERSION, kind=kind, backend=backend, created_at=now, body=body, usage=usage)


def _choice_reason(finish: dict[int, str | None], *, store_length: bool) -> str | None:
    """The verdict on the choices' final finish reasons (index -> reason, None when none came)."""
    if not finish:
        return "empty"
    if any(reason is None for reason in finish.values()):
        return "truncated"
    if not store_length and any(reason == "length" for reason in finish.values()):
        return "finish_reason length"
    return None


def _is_error_answer(answer: _Answer) -> bool:
    return answer.error is not None or answer.object == "error"


def unstorable_reason(entry: CacheEntry, *, store_length: bool) -> str | None:
    """Why this entry must not be stored, or None when it may be.

    The reasons are short strings for logs and metrics: "empty" (nothing recorded, no choices, no
    embeddings), "error" (an error object in the body or any event), "truncated" (a choice that never got
    a finish_reason), "finish_reason length" (a choice cut by max_tokens, unless `store_length`),
    "unreadable" (a body or event that is not JSON). Whether a stream reached `[DONE]` is the caller's to
    check: the entry does not record it.
    """
    if entry.body is not None:
        try:
            answer = _answer_decoder.decode(entry.body)
        except msgspec.DecodeError:
            return "unreadable"
        if _is_error_answer(answer):
            return "error"
        if entry.kind == "embedding":
            return None if answer.data else "empty"
        # A non-stream choice must carry its reason: null means the server stopped without saying why.
        finish = {choice.index: choice.finish_reason for choice in answer.choices or ()}
        return _choice_reason(finish, store_length=store_length)
    if not entry.events:
        return "empty"
    if entry.kind == "embedding":
        return "unreadable"  # embeddings never stream: events for one are not an answer
    streamed: dict[int, str | None] = {}
    for payload in entry.events:
        try:
            answer = _answer_decoder.decode(payload)
        except msgspec.DecodeError:
            return "unreadable"
        if _is_error_answer(answer):
            return "error"
        for choice in answer.choices or ():
            # The last non-null reason wins; a later chunk without one does not undo it.
            if choice.finish_reason is not None:
                streamed[choice.index] = choice.finish_reason
            else:
                streamed.setdefault(choice.index, None)
    return _choice_reason(streamed, store_length=store_length)
