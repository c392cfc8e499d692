"""TGI's request bodies, decoded the way the real router's axum `Json` extractor does.

Structs mirror `GenerateRequest`, `CompatGenerateRequest`, `GenerateParameters` and `ChatRequest`
in huggingface/text-generation-inference router/src/lib.rs (unknown fields are ignored, as serde
does without `deny_unknown_fields`; unsigned Rust fields refuse negatives). A body axum cannot
parse is refused in plain text (tokio-rs/axum axum/src/extract/rejection.rs): 400 "Failed to
parse the request body as JSON: ...", 422 "Failed to deserialize the JSON body into the target
type: ...", 415 "Expected request with `Content-Type: application/json`".
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
from aiohttp import web

T = TypeVar("T")
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
U64 = Annotated[int, msgspec.Meta(ge=0)]  # msgspec bounds stop at int64


class Grammar(msgspec.Struct):
    """`GrammarType`: `{"type": "json" | "json_object" | "regex" | "json_schema", "value": ...}`."""

    type: str
    value: Any = None


class Parameters(msgspec.Struct, kw_only=True):
    """`GenerateParameters` (every field defaults when the `parameters` object is present)."""

    best_of: U32 | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)] | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: U32 | None = None
    return_full_text: bool | None = None
    stop: list[str] = msgspec.field(default_factory=list)
    truncate: U32 | None = None
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: U64 | None = None
    top_n_tokens: U32 | None = None
    grammar: Grammar | None = None
    adapter_id: str | None = None


def default_parameters() -> Parameters:
    """`default_parameters()`: without a `parameters` object TGI samples (`do_sample: true`)."""
    return Parameters(do_sample=True)


class GenerateRequest(msgspec.Struct, kw_only=True):
    """`GenerateRequest` (`/generate`, `/generate_stream`, `/tokenize`)."""

    inputs: str
    parameters: Parameters = msgspec.field(default_factory=default_parameters)


class CompatGenerateRequest(GenerateRequest, kw_only=True):
    """`CompatGenerateRequest` (`POST /`, what the `text-generation` client calls)."""

    stream: bool = False


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatMessage(msgspec.Struct, kw_only=True):
    """`Message`: a role with text, content chunks, or tool calls (`MessageBody` is untagged)."""

    role: str
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None


class ChatRequest(msgspec.Struct, kw_only=True):
    """`ChatRequest` (`/v1/chat/completions`, `/chat_tokenize`)."""

    model: str | None = None
    messages: list[ChatMessage]
    frequency_penalty: float | None = None
    logit_bias: list[float] | None = None
    logprobs: bool | None = None
    top_logprobs: U32 | None = None
    max_tokens: U32 | None = None
    n: U32 | None = None
    presence_penalty: float | None = None
    stop: list[str] | None = None
    stream: bool = False
    seed: U64 | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_prompt: str | None = None
    tool_choice: Any = None
    response_format: Grammar | None = None
    stream_options: StreamOptions = msgspec.field(default_factory=StreamOptions)


class Rejected(Exception):
    """The body was refused before reaching TGI's handler; `response` is axum's answer."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


def _plain(status: int, text: str) -> Rejected:
    return Rejected(web.Response(status=status, text=text, content_type="text/plain", charset="utf-8"))


def decode(request: web.Request, raw: bytes, kind: type[T]) -> T:
    """The body as `kind`, or `Rejected` carrying the response axum would have sent."""
    if request.content_type != "application/json":
        raise _plain(415, "Expected request with `Content-Type: application/json`")
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as err:
        raise _plain(400, f"Failed to parse the request body as JSON: {err}") from err
    if isinstance(data, dict) and "max_completion_tokens" in data:
        # serde `alias = "max_completion_tokens"` on ChatRequest.max_tokens
        if "max_tokens" in data:
            raise _plain(422, "Failed to deserialize the JSON body into the target type: duplicate field `max_tokens`")
        data["max_tokens"] = data.pop("max_completion_tokens")
    try:
        value = msgspec.convert(data, kind)
    except msgspec.ValidationError as err:
        raise _plain(422, f"Failed to deserialize the JSON body into the target type: {err}") from err
    if isinstance(value, ChatRequest):
        for i, message in enumerate(value.messages):
            if message.content is None and message.tool_calls is None:
                raise _plain(422, f"Failed to deserialize the JSON body into the target type: messages[{i}]: data "
                                  "did not match any variant of untagged enum MessageBody")
    return value
