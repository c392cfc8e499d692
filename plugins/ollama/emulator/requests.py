"""Decoding request bodies as Ollama's handlers bind them (gin's ShouldBindJSON into api/types.go).

Go ignores unknown fields and answers a field of the wrong JSON type with 400 and
encoding/json's own message; an empty body is 400 "missing request body"
(server/routes.go, GenerateHandler/ChatHandler/EmbedHandler).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from plugins.ollama.duration import DurationError, keep_alive_seconds
from plugins.ollama.model_options import option_error


class BadRequest(Exception):
    """A request Ollama answers with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class MessageIn(msgspec.Struct):
    """api.Message as the server reads it."""

    role: str = ""
    content: str = ""
    thinking: str = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str = ""
    tool_call_id: str = ""


class ChatRequestIn(msgspec.Struct):
    """api.ChatRequest."""

    model: str = ""
    messages: list[MessageIn] = msgspec.field(default_factory=list)
    stream: bool | None = None
    format: Any = None
    keep_alive: Any = None
    tools: list[dict[str, Any]] | None = None
    options: dict[str, Any] | None = None
    think: bool | str | None = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool = False
    top_logprobs: int = 0


class GenerateRequestIn(msgspec.Struct):
    """api.GenerateRequest."""

    model: str = ""
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""
    context: list[int] | None = None
    stream: bool | None = None
    raw: bool = False
    format: Any = None
    keep_alive: Any = None
    images: list[str] | None = None
    options: dict[str, Any] | None = None
    think: bool | str | None = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool = False
    top_logprobs: int = 0


class EmbedRequestIn(msgspec.Struct):
    """api.EmbedRequest (`input` is `any` in Go and checked by the handler)."""

    model: str = ""
    input: Any = None
    keep_alive: Any = None
    truncate: bool | None = None
    dimensions: int = 0
    options: dict[str, Any] | None = None


_JSON_KIND = {"str": "string", "int": "number", "float": "number", "bool": "bool", "array": "array",
              "object": "object", "null": "null"}
_MSGSPEC_ERROR = re.compile(r"Expected `(?P<want>[^`]*)`, got `(?P<got>[^`]*)`(?: - at `\$\.?(?P<path>[^`]*)`)?")


def _binding_error(err: msgspec.ValidationError, struct: str) -> BadRequest:
    """encoding/json's UnmarshalTypeError wording: `json: cannot unmarshal X into Go struct field S.f of type T`."""
    match = _MSGSPEC_ERROR.match(str(err))
    if match is None:
        return BadRequest(400, f"json: {err}")
    got = _JSON_KIND.get(match.group("got"), match.group("got"))
    field = re.sub(r"\[\d+\]", "", match.group("path") or "")
    return BadRequest(400, f"json: cannot unmarshal {got} into Go struct field {struct}.{field} of type "
                           f"{match.group('want')}")


def decode(body: bytes, kind: type[msgspec.Struct]) -> Any:
    """The bound request, or `BadRequest` with Ollama's status and message."""
    if not body.strip():
        raise BadRequest(400, "missing request body")
    if body.strip() == b"null":
        body = b"{}"  # Go decodes a JSON null into the zero request, which the handler then checks
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as err:
        raise _binding_error(err, kind.__name__.removesuffix("In")) from err
    except msgspec.DecodeError as err:
        raise BadRequest(400, f"invalid character in JSON body: {err}") from err


def check_options(options: dict[str, Any] | None) -> None:
    """`Options.FromMap`'s type checks; its error reaches the client through handleScheduleError as a 500."""
    for name, value in (options or {}).items():
        message = option_error(name, value)
        if message is not None:
            raise BadRequest(500, message)


def keep_alive(value: Any, default_s: float) -> float:
    """Seconds to keep the model loaded; a bad value fails binding (api.Duration.UnmarshalJSON) with 400."""
    if value is None:
        return default_s
    try:
        return keep_alive_seconds(value)
    except (DurationError, TypeError) as err:
        raise BadRequest(400, str(err)) from err
