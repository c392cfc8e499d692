"""Which OpenAI parameters an Ollama server honours, and the values it cannot.

A parameter missing here is refused by the gateway with a 422 naming it (the dispatcher
checks `supported_params`); a parameter listed here whose *value* Ollama cannot honour is
refused by `check_params`. Nothing is silently dropped: Ollama has no `n`, `logit_bias`,
`best_of`, `echo`, forced tool choice, or token-id prompts (api/types.go has no field for
them), and this plugin does not ask it for logprobs.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError, bad_request, unsupported_parameter
from gateway.schemas import RequestKind
from plugins.ollama.duration import DurationError, keep_alive_seconds

# Ollama sampling options a client may send beside OpenAI's own (api/types.go Options).
NATIVE_SAMPLING = frozenset({"top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n"})

CHAT_PARAMS = frozenset({
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "n", "max_tokens",
    "max_completion_tokens", "stop", "seed", "presence_penalty", "frequency_penalty", "response_format",
    "tools", "tool_choice", "parallel_tool_calls", "user", "logprobs", "top_logprobs", "keep_alive",
}) | NATIVE_SAMPLING

COMPLETION_PARAMS = frozenset({
    "model", "prompt", "stream", "stream_options", "temperature", "top_p", "n", "max_tokens", "stop", "seed",
    "presence_penalty", "frequency_penalty", "suffix", "echo", "best_of", "logprobs", "user", "keep_alive",
}) | NATIVE_SAMPLING

EMBEDDING_PARAMS = frozenset({"model", "input", "encoding_format", "dimensions", "user", "keep_alive"})

PARAMS: dict[RequestKind, frozenset[str]] = {
    "chat": CHAT_PARAMS, "completion": COMPLETION_PARAMS, "embedding": EMBEDDING_PARAMS,
}


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool)
                                                            for v in value)


def _check_common(body: dict[str, Any], refuse: Any) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise refuse("n")
    keep_alive = body.get("keep_alive")
    if keep_alive is not None:
        try:
            keep_alive_seconds(keep_alive)
        except (DurationError, TypeError) as err:
            raise bad_request(f"Invalid value for 'keep_alive': {err} (expected a duration such as \"5m\" or "
                              "seconds)", param="keep_alive", code="invalid_value") from err


def _check_chat(body: dict[str, Any], refuse: Any) -> None:
    if body.get("logprobs") is True:
        raise refuse("logprobs")
    if body.get("top_logprobs") not in (None, 0):
        raise refuse("top_logprobs")
    if body.get("parallel_tool_calls") is False:
        raise refuse("parallel_tool_calls")  # Ollama may answer with several calls and has no switch
    tool_choice = body.get("tool_choice")
    if tool_choice not in (None, "auto", "none"):
        raise refuse("tool_choice")  # "required" or a named function: Ollama cannot force a call
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise bad_request("Invalid value for 'response_format.type': expected 'text', 'json_object' or "
                              "'json_schema'", param="response_format.type", code="invalid_value")
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise bad_request("'response_format.json_schema.schema' must be a JSON Schema object",
                                  param="response_format.json_schema.schema", code="invalid_value")
    for i, message in enumerate(body.get("messages") or ()):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            if kind == "image_url" and image_data(part) is not None:
                continue
            if kind == "image_url":
                raise GatewayError(422, "Ollama takes images as base64 data URLs "
                                        "(data:image/png;base64,...), not links",
                                   param=f"messages[{i}].content[{j}].image_url", code="unsupported_value")
            raise GatewayError(422, f"content parts of type {kind!r} are not supported by Ollama",
                               param=f"messages[{i}].content[{j}].type", code="unsupported_value")


def image_data(part: dict[str, Any]) -> str | None:
    """The base64 payload of an `image_url` part given as a data URL (what Ollama's `images` holds)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
        return url.split(";base64,", 1)[1]
    return None


def _check_completion(body: dict[str, Any], refuse: Any) -> None:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if _is_token_ids(prompt) or any(_is_token_ids(p) for p in prompt):
            raise refuse("prompt")  # token ids: Ollama's /api/generate takes text only
        if len(prompt) != 1:
            raise GatewayError(422, "Ollama completes one prompt per request; send the prompts separately",
                               param="prompt", code="unsupported_value")
    if body.get("echo") is True:
        raise refuse("echo")
    if body.get("best_of") not in (None, 1):
        raise refuse("best_of")
    if body.get("logprobs") not in (None, 0):
        raise refuse("logprobs")


def _check_embedding(body: dict[str, Any], refuse: Any) -> None:
    value = body.get("input")
    if _is_token_ids(value) or (isinstance(value, list) and any(_is_token_ids(v) for v in value)):
        raise refuse("input")  # Ollama's /api/embed takes text only


def check(kind: RequestKind, body: dict[str, Any], backend: str, plugin: str) -> None:
    """Raise a 422 (or 400 for a malformed value) for what Ollama cannot honour."""

    def refuse(param: str) -> GatewayError:
        return unsupported_parameter(param, backend, plugin)

    _check_common(body, refuse)
    if kind == "chat":
        _check_chat(body, refuse)
    elif kind == "completion":
        _check_completion(body, refuse)
    else:
        _check_embedding(body, refuse)
