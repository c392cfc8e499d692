"""Prompt prefix keys and the consistent-hash ring that the `prefix_affinity` policy places them on.

Engines with prefix caching (vLLM, SGLang, TRT-LLM, llama.cpp's slots) skip the prefill of a
prompt's leading tokens when a recent request had the same ones, so requests that share a
long prefix should land on one backend (`gateway/routing/affinity.py`).

Keys are block-granular hashes of the serialized prompt, as the engines' own caches are: one
at every message end and every `BLOCK_BYTES`, up to a byte budget. The *ring key* is the part
of the prompt that other requests share: in a chat, everything before the final user turn
(system prompt, documents, the conversation so far) when that is at least a block long;
otherwise, as for a bare prompt, its leading whole blocks. A follow-up turn finds its
conversation through the key of the previous turn's full prompt, which that request recorded.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from gateway.routing.interfaces import RequestFeatures

DEFAULT_BUDGET_BYTES = 4096  # leading bytes that identify a prefix: past them, two prompts are "the same"
BLOCK_BYTES = 512
VIRTUAL_NODES = 100  # points per backend on the ring: spreads keys within a few % of even


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class PrefixKeys(NamedTuple):
    """A request's prefix keys: `key` places it on the ring; `chain` (longest first, the ring
    key among them) is looked up in and recorded to the sticky table."""

    key: str
    chain: tuple[str, ...]


def _content_text(content: Any, limit: int) -> str:
    if isinstance(content, str):
        return content[:limit]
    if isinstance(content, list):  # content parts: text, image URLs (data URLs included)
        out: list[str] = []
        size = 0
        for part in content:
            if isinstance(part, dict):
                value = part.get("text") or (part.get("image_url") or {}).get("url") or ""
                text = value if isinstance(value, str) else ""
                out.append(text[: limit - size])
                size += len(out[-1])
                if size >= limit:
                    break
        return "\n".join(out)
    return "" if content is None else str(content)[:limit]


def _message_bytes(message: Any, limit: int) -> bytes:
    if not isinstance(message, dict):
        return b""
    head = f"{message.get('role', '')}:{message.get('name') or ''}\n"
    body = _content_text(message.get("content"), limit)
    calls = message.get("tool_calls")
    if calls:
        body += repr(calls)[:limit]
    return (head + body + "\n\n").encode()


def _prompt_bytes(prompt: Any, limit: int) -> bytes:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch: the first prompt stands for the request
    if isinstance(prompt, str):
        return prompt[:limit].encode()
    if isinstance(prompt, list):  # token ids
        return b",".join(str(t).encode() for t in prompt[: limit // 2])
    return b""


def prefix_keys(request: RequestFeatures, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> PrefixKeys | None:
    """The request's prefix keys, or None when it has no prompt to key on."""
    body = request.body
    messages = body.get("messages")
    ends: list[int] = []  # message ends, as offsets into the serialized prompt
    ring_end: int | None = None  # where the shared context ends, when the prompt has one
    floor = math.inf  # shortest key looked up: the first user turn's end in a conversation
    if isinstance(messages, list) and messages:
        parts: list[bytes] = []
        size = 0
        last = len(messages) - 1
        trailing_user = last > 0 and isinstance(messages[last], dict) and messages[last].get("role") == "user"
        for i, message in enumerate(messages):
            if size >= budget_bytes:
                break
            if i == last and trailing_user:
                ring_end = size
            encoded = _message_bytes(message, budget_bytes - size)
            parts.append(encoded)
            size += len(encoded)
            ends.append(size)
            if floor == math.inf and i < last and isinstance(message, dict) and message.get("role") == "user":
                floor = size
        data = b"".join(parts)[:budget_bytes]
    else:
        data = _prompt_bytes(body.get("prompt") if "prompt" in body else body.get("input"), budget_bytes)
    total = min(len(data), budget_bytes)
    if total == 0:
        return None
    if ring_end is None or ring_end < BLOCK_BYTES:
        # No context worth sharing (none, or shorter than a cache block, such as a one-line
        # system prompt): the leading whole blocks, which a variant of this prompt with another
        # ending still shares, or the whole prompt when it is shorter than one block. Requests
        # that share only a short system prompt then spread, each conversation on its own.
        ring_end = (total - 1) // BLOCK_BYTES * BLOCK_BYTES or total
    ring_end = min(ring_end, total)
    floor = min(floor, ring_end)
    boundaries = sorted({e for e in ends if floor <= e <= total} | {ring_end, total}
                        | set(range(BLOCK_BYTES * math.ceil(floor / BLOCK_BYTES), total, BLOCK_BYTES)) - {0})
    hasher = hashlib.blake2b(digest_size=8)
    at = 0
    keys: list[str] = []
    key = ""
    for end in boundaries:
        hasher.update(data[at:end])
        at = end
        keys.append(hasher.copy().hexdigest())
        if end == ring_end:
            key = keys[-1]
    return PrefixKeys(key, tuple(reversed(keys)))


def prefix_key(request: RequestFeatures, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> str | None:
    """The request's ring key (16 hex digits): equal for requests that share their context."""
    keys = prefix_keys(request, budget_bytes)
    return keys.key if keys is not None else None


class HashRing:
    """Consistent hashing over backend names with virtual nodes: removing a backend moves only
    the keys it owned, adding one takes keys only from others' arcs."""

    def __init__(self, names: Iterable[str], vnodes: int = VIRTUAL_NODES) -> None:
        self.names = frozenset(names)
        points = sorted((int(_digest(f"{name}#{i}".encode()), 16), name) for name in self.names for i in range(vnodes))
        self._points = [p for p, _ in points]
        self._owners = [n for _, n in points]

    def walk(self, key: str) -> Iterator[str]:
        """Every backend once, in ring order from the key's position: the owner first."""
        if not self._points:
            return
        start = bisect.bisect(self._points, int(key, 16))
        seen: set[str] = set()
        count = len(self._points)
        for i in range(count):
            name = self._owners[(start + i) % count]
            if name not in seen:
                seen.add(name)
                yield name
                if len(seen) == len(self.names):
                    return

    def owner(self, key: str) -> str | None:
        return next(self.walk(key), None)
