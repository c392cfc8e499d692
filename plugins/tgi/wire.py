"""msgspec Structs for what TGI sends back, decoded on the hot path.

Field names and shapes follow huggingface/text-generation-inference `router/src/lib.rs`
(`GenerateResponse`, `Details`, `Token`, `StreamResponse`, `StreamDetails`, `Info`,
`ChatCompletion`, `ChatCompletionChunk`, `ErrorResponse`). Every field the plugin does not
need is left out: msgspec skips unknown fields, so newer servers adding fields still decode.
"""

from __future__ import annotations

from typing import Any

import msgspec


class TGIToken(msgspec.Struct):
    """`Token`: one generated token; `logprob` is null where the server could not compute it."""

    id: int
    text: str
    logprob: float | None = None
    special: bool = False


class TGIDetails(msgspec.Struct):
    """`Details` of a `/generate` answer (present because the plugin always asks `details: true`)."""

    finish_reason: str
    generated_tokens: int
    seed: int | None = None
    tokens: list[TGIToken] = msgspec.field(default_factory=list)
    top_tokens: list[list[TGIToken]] = msgspec.field(default_factory=list)


class TGIGenerateResponse(msgspec.Struct):
    """`POST /generate`: `{"generated_text": ..., "details": {...}}`."""

    generated_text: str
    details: TGIDetails | None = None


class TGIStreamDetails(msgspec.Struct):
    """`StreamDetails`: only on the last event of `/generate_stream`, and only with `details: true`."""

    finish_reason: str
    generated_tokens: int
    seed: int | None = None
    input_length: int | None = None  # added in TGI 2.0; older servers leave it out


class TGIStreamEvent(msgspec.Struct):
    """One `data:` event of `/generate_stream`: a token, or TGI's `ErrorResponse` sent as an event.

    TGI answers 200 and reports validation, overload and generation errors as an event
    (`generate_stream` in router/src/server.rs), so one Struct decodes both shapes.
    """

    index: int = 0
    token: TGIToken | None = None
    top_tokens: list[TGIToken] = msgspec.field(default_factory=list)
    generated_text: str | None = None
    details: TGIStreamDetails | None = None
    error: str | None = None
    error_type: str | None = None


class TGIInfo(msgspec.Struct):
    """`GET /info`; `max_input_length` is the name servers before 2.0 used for `max_input_tokens`."""

    model_id: str = ""
    max_input_tokens: int | None = None
    max_input_length: int | None = None
    max_total_tokens: int | None = None
    max_concurrent_requests: int | None = None
    max_batch_size: int | None = None  # reported by TGI 1.x only
    max_stop_sequences: int | None = None
    max_best_of: int | None = None
    version: str | None = None
    docker_label: str | None = None

    @property
    def input_limit(self) -> int | None:
        return self.max_input_tokens if self.max_input_tokens is not None else self.max_input_length

    @property
    def fingerprint(self) -> str | None:
        """The `system_fingerprint` TGI's OpenAI routes report: "<version>-<docker label or native>"."""
        return f"{self.version}-{self.docker_label or 'native'}" if self.version else None


class SimpleToken(msgspec.Struct):
    """One entry of `POST /tokenize`'s answer (`SimpleToken`)."""

    id: int
    text: str = ""


class ChatTokenizeResponse(msgspec.Struct):
    """`POST /chat_tokenize`: the chat template applied, then tokenized."""

    tokenize_response: list[SimpleToken]
    templated_text: str = ""


class Usage(msgspec.Struct):
    """`Usage`, the same three counts OpenAI reports."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class TGIChatMessage(msgspec.Struct):
    """`OutputMessage`: text, or tool calls (a list since TGI 2.x)."""

    role: str = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] | dict[str, Any] | None = None


class TGIChatChoice(msgspec.Struct):
    """`ChatCompletionComplete`."""

    index: int = 0
    message: TGIChatMessage = msgspec.field(default_factory=TGIChatMessage)
    logprobs: Any = None
    finish_reason: str | None = None


class TGIChatCompletion(msgspec.Struct):
    """`POST /v1/chat/completions` without streaming (`object: chat.completion`)."""

    choices: list[TGIChatChoice]
    created: int = 0
    model: str = ""
    system_fingerprint: str | None = None
    usage: Usage | None = None


class TGIChatDelta(msgspec.Struct):
    """`ChatCompletionDelta`: a text delta or a tool-call delta."""

    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | dict[str, Any] | None = None


class TGIChatChunkChoice(msgspec.Struct):
    """`ChatCompletionChoice` of a stream chunk."""

    index: int = 0
    delta: TGIChatDelta = msgspec.field(default_factory=TGIChatDelta)
    logprobs: Any = None
    finish_reason: str | None = None


class TGIChatChunk(msgspec.Struct):
    """One event of the Messages API stream, or its error event `{"error": {"message", "http_status_code"}}`."""

    choices: list[TGIChatChunkChoice] = msgspec.field(default_factory=list)
    created: int = 0
    model: str = ""
    system_fingerprint: str | None = None
    usage: Usage | None = None
    error: dict[str, Any] | str | None = None
    error_type: str | None = None


class TGIError(msgspec.Struct):
    """`ErrorResponse`: `{"error": "...", "error_type": "..."}` (router/src/lib.rs)."""

    error: str | dict[str, Any] = ""
    error_type: str | None = None


decode_generate = msgspec.json.Decoder(TGIGenerateResponse).decode
decode_stream_event = msgspec.json.Decoder(TGIStreamEvent).decode
decode_info = msgspec.json.Decoder(TGIInfo).decode
decode_tokenize = msgspec.json.Decoder(list[SimpleToken]).decode
decode_chat_tokenize = msgspec.json.Decoder(ChatTokenizeResponse).decode
decode_chat = msgspec.json.Decoder(TGIChatCompletion).decode
decode_chat_chunk = msgspec.json.Decoder(TGIChatChunk).decode
decode_error = msgspec.json.Decoder(TGIError).decode
