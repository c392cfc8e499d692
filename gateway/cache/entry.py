"""What the response cache stores for one answer: a non-stream body or a stream's events, and its usage.

An entry is msgpack, not JSON: it holds JSON payloads as opaque bytes, and msgpack carries bytes without
escaping them again. Structs are `array_like`, so field names are not repeated in every stored entry; the
price is that the field order below is the storage format, which is why `ENTRY_VERSION` exists.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ["ENTRY_VERSION", "CacheEntry", "CachedUsage", "decode_entry", "encode_entry"]

# Bumped whenever a field is added, removed or reordered: an entry written by another layout is a miss,
# never a misread.
ENTRY_VERSION: Final = 1

_KINDS: Final = frozenset({"chat", "completion", "embedding"})


class CachedUsage(msgspec.Struct, array_like=True):
    """The token counts of a stored answer.

    `exact` is False when the gateway counted them itself (a stream that carried no usage chunk: one
    content chunk counts as one token, and `prompt_tokens` is the gateway's estimate of the prompt).
    """

    prompt_tokens: int
    completion_tokens: int
    exact: bool


class CacheEntry(msgspec.Struct, array_like=True):
    """One stored answer.

    A non-stream answer keeps its JSON `body` exactly as the backend sent it. A stream answer keeps each
    SSE event's data payload in `events` (the JSON after `data: `, without the final `[DONE]`) and, in
    `offsets_ms`, the milliseconds from the first event to each one, so a replay can be paced like the
    original. `backend` is the backend that produced it and `created_at` the unix time it was stored.
    """

    version: int
    kind: str
    backend: str
    created_at: float
    body: bytes | None = None
    events: list[bytes] = []
    offsets_ms: list[int] = []
    usage: CachedUsage | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CacheEntry)


def encode_entry(entry: CacheEntry) -> bytes:
    """The entry as the bytes a cache store holds."""
    return _encoder.encode(entry)


def decode_entry(data: bytes) -> CacheEntry | None:
    """The entry stored as `data`, or None when it is not one this version can serve.

    None for bytes that are not an entry at all, for an entry of another `ENTRY_VERSION`, and for one
    whose fields contradict each other (an unknown kind, offsets that do not match the events). Never
    raises: a bad entry must cost a miss, not a failed request.
    """
    try:
        entry = _decoder.decode(data)
    # Not only DecodeError: whatever a store hands back (corrupt, truncated, foreign) must read as a miss.
    except Exception:
        return None
    if entry.version != ENTRY_VERSION or entry.kind not in _KINDS:
        return None
    if len(entry.offsets_ms) != len(entry.events):
        return None
    return entry
