"""The response cache's canonical key: one digest per distinct output, whatever the request's JSON looked like.

Two requests share a key exactly when a backend would give them the same output: same kind, same route model,
same tenant, same normalised messages or prompt, same output-affecting parameters. What does not count: key order,
whitespace between JSON tokens, `1` versus `1.0`, an explicit `null` versus an absent field, a string content versus
the one text part that says the same, and the fields in `OUTPUT_NEUTRAL`.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Final

import msgspec

__all__ = ["KEY_VERSION", "KINDS", "OUTPUT_NEUTRAL", "CacheKey", "cache_key", "is_deterministic"]

# Bumped whenever the normalisation below changes, so entries written under old rules are never read as new ones.
KEY_VERSION: Final = "gateway-cache-key/1"

# The request kinds a key can be for; a typo here would silently split or merge cache spaces, so it is checked.
KINDS: Final = frozenset({"chat", "completion", "embedding"})

OUTPUT_NEUTRAL: frozenset[str] = frozenset(
    {
        # Transport only: a stored stream answers a non-stream request as assembled JSON, and the other way round.
        "stream",
        # Only shapes the stream (e.g. the trailing usage chunk), which replay rebuilds from the stored entry.
        "stream_options",
        # End-user identifiers for abuse monitoring; tenancy is keyed separately through `tenant`.
        "user",
        "safety_identifier",
        # Bookkeeping attached to the request, never seen by the model.
        "metadata",
        "store",
        # Scheduling hints: they change when the answer comes, not what it says.
        "service_tier",
        "priority",
        # Hints for a server's own prompt cache, and client-chosen ids: the content generated is the same.
        "prompt_cache_key",
        "request_id",
    }
)
# Deliberately NOT neutral: `n` (number of choices), `logprobs`/`top_logprobs` (extra output), `echo`,
# `response_format`, `tools`/`tool_choice`/`parallel_tool_calls`, `seed`, `stop`, every sampling parameter,
# and any unknown field: a field we do not know about might change the output, so it stays in the key.


class CacheKey(msgspec.Struct, frozen=True):
    """A request's cache identity: the hex SHA-256 `digest`, plus the tenant and route model kept in the clear.

    `tenant` and `model` are already inside the digest; they are carried alongside so a store can index or
    delete entries by tenant or by model without decoding anything.
    """

    digest: str
    tenant: str
    model: str


def _normalise(value: Any) -> Any:
    """Recursively canonicalise a JSON value: None-valued dict fields dropped, integral floats made ints."""
    if isinstance(value, dict):
        # An explicit null means "absent" to the servers we front, so it must not split the key.
        return {k: _normalise(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        # Nulls inside a list are positional data, not absent fields: they stay.
        return [_normalise(v) for v in value]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        # temperature 0 and 0.0 (or max_tokens 16.0) mean the same; bools never reach here (not floats).
        return int(value)
    return value


def _normalise_content(content: Any) -> Any:
    """A list holding exactly one plain text part becomes its text: servers treat the two forms the same."""
    if isinstance(content, list) and len(content) == 1:
        part = content[0]
        if isinstance(part, dict) and part.keys() == {"type", "text"} and part["type"] == "text":
            text = part["text"]
            if isinstance(text, str):
                return text
    # Several parts are left as they are: servers differ in how they join them, so joining here could merge
    # requests that get different outputs.
    return content


def _canonical_body(route_model: str, body: dict[str, Any]) -> dict[str, Any]:
    """The output-affecting part of the body, normalised, with the route's model in place of the client's."""
    kept: dict[str, Any] = _normalise({k: v for k, v in body.items() if k not in OUTPUT_NEUTRAL})
    # Aliases resolve to one route: two names for the same route model must share entries.
    kept["model"] = route_model
    messages = kept.get("messages")
    if isinstance(messages, list):
        kept["messages"] = [
            {**m, "content": _normalise_content(m["content"])} if isinstance(m, dict) and "content" in m else m
            for m in messages
        ]
    return kept


def cache_key(kind: str, route_model: str, body: dict[str, Any], tenant: str) -> CacheKey:
    """The canonical cache key of a decoded request body.

    `kind` is "chat", "completion" or "embedding"; `route_model` is the model of the route the request resolved
    to (it replaces the body's `model`); `tenant` is the API key or namespace the entry belongs to. The digest is
    a SHA-256 over the sorted-key JSON of the version tag, kind, route model, tenant and the normalised body
    minus `OUTPUT_NEUTRAL`. Text is hashed verbatim: whitespace inside a prompt changes the output, so it
    changes the key. Raises ValueError for an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown cache key kind {kind!r}; expected one of {sorted(KINDS)}")
    payload = [KEY_VERSION, kind, route_model, tenant, _canonical_body(route_model, body)]
    # A list, not a dict, at the top: position separates the parts, so no tenant value can pose as a model name.
    encoded = msgspec.json.encode(payload, order="sorted")
    return CacheKey(digest=hashlib.sha256(encoded).hexdigest(), tenant=tenant, model=route_model)


def _is_number(value: Any) -> bool:
    """A JSON number; bools are ints in Python but `true` is not a temperature."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_deterministic(body: dict[str, Any]) -> bool:
    """Whether a request asks for a reproducible output, which is what the default cache mode stores.

    True when `temperature` is 0 (0 or 0.0: greedy decoding), when `top_k` is 1 (greedy whatever the
    temperature), or when a `seed` is set (the caller asked for a reproducible sample). A request without
    `temperature` is not deterministic: servers default to sampling (usually temperature 1).
    """
    temperature = body.get("temperature")
    if _is_number(temperature) and temperature == 0:
        return True
    top_k = body.get("top_k")
    if _is_number(top_k) and top_k == 1:
        return True
    return body.get("seed") is not None
