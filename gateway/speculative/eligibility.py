"""Which requests may be decoded speculatively (reference §2.0.3, §5.4).

Speculation here is exact greedy decoding: the client gets what the target alone would produce at
temperature 0. A request asking for anything else is served by the route as usual, and the reason is
counted (`gateway_speculative_fallbacks_total{reason}`).
"""

from __future__ import annotations

from typing import Any

from gateway.schemas import RequestKind

# Fields that change which token the target picks, or constrain it, in ways a verify call of
# committed ids cannot reproduce: penalties count earlier output tokens (which become prompt tokens
# in a verify call), grammars restart at the new prompt boundary.
_PENALTIES = (("presence_penalty", 0), ("frequency_penalty", 0), ("repetition_penalty", 1))
_GRAMMARS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs", "grammar",
             "json_schema")


def plain_reason(kind: RequestKind, body: dict[str, Any]) -> str | None:
    """Why `body` must be decoded plainly on the route, or None when it can speculate."""
    if kind != "chat":
        return "not_chat"
    if body.get("n") not in (None, 1):
        return "n"
    temperature = body.get("temperature")
    top_k = body.get("top_k")
    if not (temperature == 0 or top_k == 1):
        # No temperature means the server's default, which samples: only an explicit greedy request
        # has one right answer to be exact about.
        return "sampling"
    for name, neutral in _PENALTIES:
        value = body.get(name)
        if value is not None and value != neutral:
            return "penalties"
    if body.get("logit_bias"):
        return "penalties"
    if any(body.get(name) not in (None, {}, "") for name in _GRAMMARS):
        return "grammar"
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        return "grammar"
    if body.get("tools") or body.get("functions"):
        return "tools"
    if body.get("logprobs") or body.get("top_logprobs"):
        return "logprobs"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages"
    return None


def max_new_tokens(body: dict[str, Any], default: int) -> int:
    """The client's output limit (`max_completion_tokens`, else `max_tokens`), else `default`."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def stop_strings(body: dict[str, Any]) -> list[str]:
    """`stop` as a list (OpenAI takes a string or up to 4 strings)."""
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str)]
    return []
