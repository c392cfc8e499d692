"""Serving a stored answer (or a leader's live events) to a request that may want it in another shape.

The key ignores `stream` and `stream_options`, so one entry answers both: a stored stream is assembled into
the non-stream JSON a server would have sent, a stored body is cut into the chunks a server would have
streamed, and the trailing usage chunk is dropped or synthesized to match `include_usage`. Replayed usage
is marked cached (`prompt_tokens_details.cached_tokens`, `"cached": true`) with its counts unchanged.
Model renaming is the caller's, applied to the bytes this returns.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.cache.entry import CachedUsage, CacheEntry
from gateway.sse import DONE_EVENT

__all__ = ["StreamReplay", "mark_usage_cached", "pacing_delays", "replay_body", "replay_stream"]

_encode = msgspec.json.Encoder().encode
# Top-level fields split but left unparsed: replacing `usage` must not cost decoding the rest.
_fields_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_CHAT_TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")


class _Head(msgspec.Struct):
    id: str | None = None
    created: int | None = None
    model: str | None = None


def mark_usage_cached(usage: dict[str, Any]) -> dict[str, Any]:
    """A copy of an OpenAI usage object saying the whole prompt came from cache; the counts are unchanged."""
    marked = dict(usage)
    details = usage.get("prompt_tokens_details")
    details = dict(details) if isinstance(details, dict) else {}
    details["cached_tokens"] = usage.get("prompt_tokens", 0)
    marked["prompt_tokens_details"] = details
    marked["cached"] = True
    return marked


def _usage_dict(usage: CachedUsage, kind: str) -> dict[str, Any]:
    """The OpenAI usage object for stored counts (embeddings have no completion tokens)."""
    if kind == "embedding":
        return {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def _chunk_object(kind: str) -> str:
    return "chat.completion.chunk" if kind == "chat" else "text_completion"


def _decode(data: bytes) -> Any:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as err:
        raise ValueError(f"cache entry holds JSON it cannot replay: {err}") from None


# --- a stored body, as a body ---------------------------------------------------------------------


def _body_with_cached_usage(entry: CacheEntry, body: bytes) -> bytes:
    try:
        fields = _fields_decoder.decode(body)
    except msgspec.DecodeError:
        return body  # stored without a JSON object at the top: nothing to mark
    raw = fields.get("usage")
    usage = msgspec.json.decode(raw) if raw is not None else None
    if isinstance(usage, dict):
        marked = mark_usage_cached(usage)
    elif entry.usage is not None:
        marked = mark_usage_cached(_usage_dict(entry.usage, entry.kind))
    else:
        return body
    fields["usage"] = msgspec.Raw(_encode(marked))
    return _encode(fields)


# --- a stored stream, as a body -------------------------------------------------------------------


class _ChoiceParts:
    """One choice's deltas, accumulated into the choice of a non-stream body."""

    __slots__ = ("finish_reason", "logprobs", "role", "stop_reason", "texts", "tool_calls")

    def __init__(self) -> None:
        self.role: str | None = None
        self.texts: dict[str, list[str]] = {}
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.stop_reason: Any = ...  # Ellipsis: no chunk had vLLM's field, so the body leaves it out

    def add(self, choice: dict[str, Any], *, chat: bool) -> None:
        delta = choice.get("delta") if chat else {"text": choice.get("text")}
        if isinstance(delta, dict):
            self.role = self.role or delta.get("role")
            for field in _CHAT_TEXT_FIELDS if chat else ("text",):
                if isinstance(delta.get(field), str):
                    self.texts.setdefault(field, []).append(delta[field])
            if isinstance(delta.get("tool_calls"), list):
                self._add_tool_calls(delta["tool_calls"])
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            merged = self.logprobs = self.logprobs if self.logprobs is not None else {}
            # Lists concatenate: chat's `content`/`refusal`; completions' tokens, token_logprobs, top_logprobs
            # and text_offset.
            for key, value in logprobs.items():
                if isinstance(value, list):
                    if isinstance(merged.get(key), list):
                        merged[key].extend(value)  # in place: a long stream must not copy the list per chunk
                    else:
                        merged[key] = list(value)
                elif merged.get(key) is None:
                    merged[key] = value
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        if "stop_reason" in choice and (self.stop_reason is ... or choice["stop_reason"] is not None):
            self.stop_reason = choice["stop_reason"]

    def _add_tool_calls(self, calls: list[Any]) -> None:
        """Pieces of one call share its `index`; its id, type and name come once, its arguments in pieces."""
        for position, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            slot = self.tool_calls.setdefault(call.get("index", position),
                                              {"id": None, "type": None, "name": None, "arguments": []})
            function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
            for key, value in (("id", call.get("id")), ("type", call.get("type")), ("name", function.get("name"))):
                if slot[key] is None and value:
                    slot[key] = value
            if isinstance(function.get("arguments"), str):
                slot["arguments"].append(function["arguments"])

    def build(self, index: int, *, chat: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index}
        if chat:
            content: str | None = "".join(self.texts.get("content", ()))
            if not content and self.tool_calls:
                content = None  # what servers send for a pure tool-call answer
            message: dict[str, Any] = {"role": self.role or "assistant", "content": content}
            message.update((field, "".join(self.texts[field])) for field in _CHAT_TEXT_FIELDS[1:]
                           if field in self.texts)
            if self.tool_calls:
                message["tool_calls"] = [
                    {"id": slot["id"], "type": slot["type"] or "function",
                     "function": {"name": slot["name"], "arguments": "".join(slot["arguments"])}}
                    for _, slot in sorted(self.tool_calls.items())
                ]
            choice["message"] = message
        else:
            choice["text"] = "".join(self.texts.get("text", ()))
        choice["logprobs"] = self.logprobs
        choice["finish_reason"] = self.finish_reason
        if self.stop_reason is not ...:
            choice["stop_reason"] = self.stop_reason
        return choice


def _assemble(entry: CacheEntry) -> dict[str, Any]:
    """The non-stream body a server would have sent for the stored chunks."""
    chat = entry.kind == "chat"
    head: dict[str, Any] = {"id": None, "created": None, "model": None}
    optional: dict[str, Any] = {}
    usage: dict[str, Any] | None = None
    parts: dict[int, _ChoiceParts] = {}
    for payload in entry.events:
        chunk = _decode(payload)
        if not isinstance(chunk, dict):
            continue
        for key in head:
            if head[key] is None:
                head[key] = chunk.get(key)
        for key in ("system_fingerprint", "service_tier"):
            if key in chunk and optional.get(key) is None:
                optional[key] = chunk[key]
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]  # the last one: vLLM's continuous usage grows with each chunk
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                parts.setdefault(choice.get("index", 0), _ChoiceParts()).add(choice, chat=chat)
    if usage is None and entry.usage is not None:
        usage = _usage_dict(entry.usage, entry.kind)
    body: dict[str, Any] = {
        "id": head["id"] or "",
        "object": "chat.completion" if chat else "text_completion",
        "created": head["created"] if head["created"] is not None else int(entry.created_at),
        "model": head["model"] or "",
        "choices": [part.build(index, chat=chat) for index, part in sorted(parts.items())],
    }
    if usage is not None:
        body["usage"] = mark_usage_cached(usage)
    body.update(optional)
    return body


def replay_body(entry: CacheEntry) -> bytes:
    """The non-stream JSON response for `entry`, its usage marked cached.

    A stored body comes back as it was, but for its usage (added from the entry's counts when the body had
    none). A stored stream is assembled into the `chat.completion` / `text_completion` body the server
    would have sent. Raises ValueError for an entry with neither, or whose JSON cannot be read.
    """
    if entry.body is not None:
        return _body_with_cached_usage(entry, entry.body)
    if not entry.events or entry.kind == "embedding":
        raise ValueError(f"a {entry.kind} cache entry with no body and no events has nothing to replay")
    return _encode(_assemble(entry))


# --- as a stream ----------------------------------------------------------------------------------


class StreamReplay:
    """Turns a stream's payloads (stored, or a leader's arriving live) into the SSE body one request wants.

    Only a payload that may be a usage chunk is decoded; every other one passes as it came.
    """

    __slots__ = ("include_usage", "usage_sent")

    def __init__(self, *, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.usage_sent = False  # a usage-only chunk has gone out, so `end` adds none

    def event(self, payload: bytes) -> bytes:
        """The SSE event for `payload`, or b"" when this request must not get it (a usage-only chunk when
        `include_usage` is off). A kept usage-only chunk gets its usage marked cached; a chunk with choices
        and a usage (vLLM's continuous usage) passes unchanged."""
        if b'"usage"' not in payload or not (b'"usage":{' in payload or b'"usage": {' in payload):
            return _sse(payload)
        try:
            fields = _fields_decoder.decode(payload)
            raw_choices = fields.get("choices")
            if raw_choices is not None and msgspec.json.decode(raw_choices):
                return _sse(payload)
            raw_usage = fields.get("usage")
            usage = msgspec.json.decode(raw_usage) if raw_usage is not None else None
        except msgspec.DecodeError:
            return _sse(payload)  # not ours to judge: pass it as the server sent it
        if not isinstance(usage, dict):
            return _sse(payload)
        if not self.include_usage:
            return b""
        self.usage_sent = True
        fields["usage"] = msgspec.Raw(_encode(mark_usage_cached(usage)))
        return _sse(_encode(fields))

    def closing_events(self, entry: CacheEntry) -> list[bytes]:
        """`end`'s events one by one: the synthesized usage chunk if one is due, then `[DONE]`."""
        if not self.include_usage or self.usage_sent or entry.usage is None:
            return [DONE_EVENT]
        source = entry.events[0] if entry.events else entry.body
        try:
            head = msgspec.json.decode(source, type=_Head) if source is not None else _Head()
        except msgspec.DecodeError:
            head = _Head()
        chunk = {
            "id": head.id or "",
            "object": _chunk_object(entry.kind),
            "created": head.created if head.created is not None else int(entry.created_at),
            "model": head.model or "",
            "choices": [],
            "usage": mark_usage_cached(_usage_dict(entry.usage, entry.kind)),
        }
        self.usage_sent = True
        return [_sse(_encode(chunk)), DONE_EVENT]

    def end(self, entry: CacheEntry) -> bytes:
        """What closes the stream: a usage chunk built from `entry.usage` when this request asked for usage
        and none has passed, then `data: [DONE]`."""
        return b"".join(self.closing_events(entry))


def _chunks_from_body(entry: CacheEntry, body_bytes: bytes) -> list[bytes]:
    """The chunks vLLM would have streamed for a non-stream body: per choice a role chunk (chat), one chunk
    with all the content, one with the finish reason; then the body's usage as a usage-only chunk."""
    body = _decode(body_bytes)
    if not isinstance(body, dict):
        raise ValueError("cache entry body is not a JSON object")
    chat = entry.kind == "chat"
    head: dict[str, Any] = {
        "id": body.get("id", ""),
        "object": _chunk_object(entry.kind),
        "created": body.get("created", int(entry.created_at)),
        "model": body.get("model", ""),
    }
    if "system_fingerprint" in body:
        head["system_fingerprint"] = body["system_fingerprint"]
    chunks: list[dict[str, Any]] = []

    def add(choice: dict[str, Any]) -> None:
        chunks.append({**head, "choices": [choice]})

    choices = [c for c in body.get("choices") or () if isinstance(c, dict)]
    for choice in sorted(choices, key=lambda c: c.get("index", 0)):
        index, logprobs = choice.get("index", 0), choice.get("logprobs")
        finish: dict[str, Any] = {"index": index}
        if chat:
            message = choice.get("message") or {}
            add({"index": index, "delta": {"role": message.get("role") or "assistant", "content": ""},
                 "logprobs": None, "finish_reason": None})
            delta = {field: message[field] for field in _CHAT_TEXT_FIELDS if message.get(field)}
            if message.get("tool_calls"):
                delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(message["tool_calls"])]
            # Sent even when empty: the chunk count must not depend on the content (see `pacing_delays`).
            add({"index": index, "delta": delta or {"content": ""}, "logprobs": logprobs, "finish_reason": None})
            finish["delta"] = {}
        else:
            add({"index": index, "text": choice.get("text") or "", "logprobs": logprobs, "finish_reason": None})
            finish["text"] = ""
        finish["logprobs"] = None
        finish["finish_reason"] = choice.get("finish_reason")
        if "stop_reason" in choice:
            finish["stop_reason"] = choice["stop_reason"]
        add(finish)
    if isinstance(body.get("usage"), dict):
        # Left unmarked: StreamReplay.event marks it, or drops it for a request without include_usage.
        chunks.append({**head, "choices": [], "usage": body["usage"]})
    return [_encode(chunk) for chunk in chunks]


def replay_stream(entry: CacheEntry, *, include_usage: bool) -> list[bytes]:
    """The whole SSE body for a stream request, one element per event slot, the last `data: [DONE]`.

    A stored stream keeps its chunks and their boundaries; a stored body is cut into chunks as vLLM would
    have sent them. The number of elements depends on the entry alone, never on `include_usage`, so the
    list lines up with `pacing_delays(entry)` one to one: an event this request must not get (a usage chunk
    it did not ask for) is an empty element, and so is the slot before `[DONE]` when no usage chunk is
    synthesized there. Raises ValueError for an embedding (embeddings never stream) or an unreadable entry.
    """
    if entry.kind == "embedding":
        raise ValueError("embeddings cannot be replayed as a stream")
    payloads = _chunks_from_body(entry, entry.body) if entry.body is not None else entry.events
    replay = StreamReplay(include_usage=include_usage)
    out = [replay.event(payload) for payload in payloads]
    closing = replay.closing_events(entry)
    out.append(closing[0] if len(closing) > 1 else b"")
    out.append(DONE_EVENT)
    return out


def pacing_delays(entry: CacheEntry) -> list[float]:
    """Seconds to wait before each element of `replay_stream(entry, ...)`, as long as that list: 0 for the
    first, then the gaps the original stream had; zeros for a stored body, which had no timing, and for the
    usage slot and `[DONE]` at the end."""
    if entry.body is not None:
        if entry.kind == "embedding":
            raise ValueError("embeddings cannot be replayed as a stream")
        return [0.0] * (len(_chunks_from_body(entry, entry.body)) + 2)
    offsets = entry.offsets_ms
    delays = [0.0] * (len(offsets) + 2)
    for i in range(1, len(offsets)):
        delays[i] = max(0, offsets[i] - offsets[i - 1]) / 1000
    return delays
