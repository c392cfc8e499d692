"""Decoding and validating request bodies into the forwarded dict and its typed view."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from gateway.errors import GatewayError, bad_request
from gateway.schemas import REQUEST_TYPES, RequestKind

_decode_json = msgspec.json.Decoder().decode
_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _param_path(path: str) -> str:
    return path[1:] if path.startswith(".") else path


def _validation_error(err: msgspec.ValidationError) -> GatewayError:
    match = _PATH.match(str(err))
    assert match is not None
    message, path = match.group("msg"), _param_path(match.group("path") or "")
    if message.startswith("Object missing required field"):
        field = message.split("`")[1]
        param = f"{path}.{field}" if path else field
        return bad_request(f"Missing required parameter: '{param}'", param=param, code="missing_required_parameter")
    message = message.replace("`", "")
    if path:
        return bad_request(f"Invalid value for '{path}': {message[0].lower()}{message[1:]}", param=path,
                           code="invalid_value")
    return bad_request(f"Invalid request body: {message}", code="invalid_value")


def decode_request(kind: RequestKind, body: bytes) -> tuple[dict[str, Any], Any]:
    """(forwarded dict, validated Struct) or a 400 `GatewayError` naming the bad field."""
    if not body:
        raise bad_request("The request body is empty; expected a JSON object", code="invalid_json")
    try:
        data = _decode_json(body)
    except msgspec.DecodeError as err:
        raise bad_request(f"The request body is not valid JSON: {err}", code="invalid_json") from err
    except UnicodeDecodeError as err:
        # msgspec reports bytes that are not UTF-8 inside a JSON string this way, not as a DecodeError.
        raise bad_request(f"The request body is not valid UTF-8: {err.reason} at byte {err.start}",
                          code="invalid_json") from err
    except RecursionError as err:
        raise bad_request("The request body is nested too deeply", code="invalid_json") from err
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object", code="invalid_json")
    try:
        request = msgspec.convert(data, REQUEST_TYPES[kind])
    except msgspec.ValidationError as err:
        raise _validation_error(err) from err
    except RecursionError as err:
        raise bad_request("The request body is nested too deeply", code="invalid_json") from err
    _check_values(kind, request)
    return data, request


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _check_prompt(field: str, value: Any) -> None:
    """A prompt or input list holds only strings, only token ids, or only lists of token ids."""
    if isinstance(value, str):
        return
    if not value:
        raise bad_request(f"'{field}' must not be empty", param=field, code="invalid_value")
    if all(isinstance(v, str) for v in value) or _is_token_ids(value) or all(_is_token_ids(v) for v in value):
        return
    raise bad_request(
        f"Invalid value for '{field}': expected a string, a list of strings, a list of token ids "
        "or a list of lists of token ids",
        param=field,
        code="invalid_value",
    )


def _check_values(kind: RequestKind, request: Any) -> None:
    """Rules OpenAI enforces beyond types, checked here so every backend sees sane input."""
    if kind == "chat" and not request.messages:
        raise bad_request("'messages' must contain at least one message", param="messages", code="invalid_value")
    n = getattr(request, "n", None)
    if n is not None and not 1 <= n <= 128:
        raise bad_request("'n' must be between 1 and 128", param="n", code="invalid_value")
    for field in ("max_tokens", "max_completion_tokens"):
        value = getattr(request, field, None)
        if value is not None and value < 1:
            raise bad_request(f"'{field}' must be at least 1", param=field, code="invalid_value")
    if kind == "completion":
        _check_prompt("prompt", request.prompt)
    if kind == "embedding":
        _check_prompt("input", request.input)
    elif isinstance(request.stop, list) and len(request.stop) > 16:
        raise bad_request("'stop' may hold at most 16 sequences", param="stop", code="invalid_value")
