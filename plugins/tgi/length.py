"""Refusing prompts TGI would refuse for length, before the generation request is sent.

TGI validates `input_length <= max_input_tokens` and `input_length + max_new_tokens <=
max_total_tokens` (`validate_input`, router/src/validation.rs), both read from `GET /info`.
The gateway applies OpenAI's rule for the second (prompt + max_tokens must fit), which is
stricter than TGI 3, which re-queues past 1024 new tokens instead of refusing.

Counting costs nothing for most prompts: a token always covers at least one UTF-8 byte (byte-
level BPE and SentencePiece with byte fallback alike), so a prompt whose byte length plus a few
special tokens fits cannot be too long. Only prompts that might not fit are counted exactly
with the server's own tokenizer (`POST /tokenize`, or `POST /chat_tokenize` for chat so the
chat template is counted too). When the server cannot tokenize, the check is skipped and
TGI's own validation (mapped to the same 400) is the backstop.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.errors import GatewayError

# BOS/EOS and similar tokens a tokenizer adds on its own.
SPECIAL_TOKEN_SLACK = 8
# Role markers and separators a chat template adds per message (an estimate: a bound only
# decides whether to count exactly, never whether to refuse).
TEMPLATE_SLACK_PER_MESSAGE = 16
# A bound so large that any limit makes the prompt "may be too long", so it is counted exactly.
IMAGE_MEANS_COUNT = 1 << 40


class Limits(msgspec.Struct, frozen=True):
    """The two lengths TGI enforces, from `/info` or the config."""

    max_input_tokens: int | None
    max_total_tokens: int | None


def chat_bytes_bound(messages: Any) -> int:
    """An upper bound of a chat's template-free text size, in bytes."""
    total = 0
    if not isinstance(messages, list):
        return 0
    for message in messages:
        total += TEMPLATE_SLACK_PER_MESSAGE
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            total += len(content.encode())
        elif isinstance(content, list):
            if any(isinstance(part, dict) and part.get("type") == "image_url" for part in content):
                # An image costs the vision model hundreds of tokens whatever its URL's length: count.
                return IMAGE_MEANS_COUNT
            total += len(msgspec.json.encode(content))
        if message.get("tool_calls"):
            total += len(msgspec.json.encode(message["tool_calls"]))
    return total


def may_be_too_long(limits: Limits, size_bound: int, max_tokens: int | None) -> bool:
    """False when the prompt surely fits; True when it must be counted exactly."""
    bound = size_bound + SPECIAL_TOKEN_SLACK
    if limits.max_input_tokens is not None and bound > limits.max_input_tokens:
        return True
    if limits.max_total_tokens is None or max_tokens is None:
        return False
    return bound + max_tokens > limits.max_total_tokens


def too_long(backend: str, limits: Limits, prompt_tokens: int, max_tokens: int | None,
             kind: str) -> GatewayError | None:
    """The 400 for a prompt of `prompt_tokens` that TGI would refuse, or None when it fits."""
    what = "messages" if kind == "chat" else "prompt"
    if limits.max_input_tokens is not None and prompt_tokens > limits.max_input_tokens:
        return GatewayError(
            400,
            f"backend '{backend}': the {what} is {prompt_tokens} tokens, over the server's max_input_tokens of "
            f"{limits.max_input_tokens}",
            param=what, code="context_length_exceeded",
        )
    if limits.max_total_tokens is not None and max_tokens is not None \
            and prompt_tokens + max_tokens > limits.max_total_tokens:
        return GatewayError(
            400,
            f"backend '{backend}': {prompt_tokens} prompt tokens + max_tokens {max_tokens} = "
            f"{prompt_tokens + max_tokens} tokens, over the server's max_total_tokens of {limits.max_total_tokens}",
            param="max_tokens", code="context_length_exceeded",
        )
    return None
