"""TGI's answers -> OpenAI response bodies (non-streaming)."""

from __future__ import annotations

from typing import Any

from plugins.tgi.openai_out import (
    ChatChoiceOut,
    ChatCompletionOut,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    encode,
    new_id,
    now,
)
from plugins.tgi.stop_sequences import openai_finish_reason, strip_stop
from plugins.tgi.wire import TGIChatCompletion, TGIToken, Usage


def completion_logprobs(tokens: list[TGIToken], top_tokens: list[list[TGIToken]], text: str, *,
                        want_top: bool, start_offset: int = 0) -> CompletionLogprobs:
    """OpenAI's legacy logprobs for the tokens that make up `text` (special tokens are not text)."""
    out_tokens: list[str] = []
    logprobs: list[float | None] = []
    tops: list[dict[str, float]] = []
    offsets: list[int] = []
    offset = 0
    for i, token in enumerate(tokens):
        if token.special or offset >= len(text):
            continue
        piece = token.text[: len(text) - offset]  # the last token may be cut where a stop sequence began
        out_tokens.append(piece)
        logprobs.append(token.logprob)
        offsets.append(start_offset + offset)
        if want_top:
            candidates = top_tokens[i] if i < len(top_tokens) else []
            tops.append({c.text: c.logprob for c in candidates if c.logprob is not None})
        offset += len(token.text)
    return CompletionLogprobs(tokens=out_tokens, token_logprobs=logprobs, top_logprobs=tops if want_top else None,
                              text_offset=offsets)


def completion_body(*, model: str, fingerprint: str | None, text: str, finish_reason: str, stops: list[str],
                    tokens: list[TGIToken], top_tokens: list[list[TGIToken]], prompt_tokens: int, generated_tokens: int,
                    logprobs: int | None, echo_prompt: str | None) -> bytes:
    """A `text_completion` body from what `/generate` (or a drained `/generate_stream`) produced."""
    if finish_reason == "stop_sequence":
        text = strip_stop(text, stops)
    choice_logprobs = None
    if logprobs is not None:
        choice_logprobs = completion_logprobs(tokens, top_tokens, text, want_top=logprobs > 0,
                                              start_offset=len(echo_prompt or ""))
    if echo_prompt is not None:
        text = echo_prompt + text
    body = Completion(
        id=new_id("cmpl"), object="text_completion", created=now(), model=model, system_fingerprint=fingerprint,
        choices=[CompletionChoice(index=0, text=text, logprobs=choice_logprobs,
                                  finish_reason=openai_finish_reason(finish_reason))],
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=generated_tokens,
                    total_tokens=prompt_tokens + generated_tokens),
    )
    return encode(body)


def tool_calls_out(value: list[dict[str, Any]] | dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """Tool calls in OpenAI's shape: a list, `arguments` a string, no TGI-only `description`."""
    if value is None:
        return None
    calls = value if isinstance(value, list) else [value]
    out = []
    for call in calls:
        function = dict(call.get("function") or {})
        function.pop("description", None)
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            function["arguments"] = encode(arguments).decode()
        out.append({**call, "id": str(call.get("id", "0")), "function": function})
    return out


def chat_body(tgi: TGIChatCompletion, *, model: str, stops: list[str]) -> bytes:
    """A `chat.completion` from TGI's: an id, OpenAI finish reasons, no stop sequence in the text."""
    choices = []
    for choice in tgi.choices:
        reason = choice.finish_reason or "stop"
        content = choice.message.content
        tool_calls = tool_calls_out(choice.message.tool_calls)
        if content is not None and reason == "stop_sequence":
            content = strip_stop(content, stops)
        finish = "tool_calls" if tool_calls else openai_finish_reason(reason)
        message = ChatMessageOut(role=choice.message.role or "assistant",
                                 content=None if tool_calls and not content else content, tool_calls=tool_calls)
        choices.append(ChatChoiceOut(index=choice.index, message=message, logprobs=choice.logprobs,
                                     finish_reason=finish))
    body = ChatCompletionOut(
        id=new_id("chatcmpl"), object="chat.completion", created=tgi.created or now(), model=model,
        system_fingerprint=tgi.system_fingerprint, choices=choices, usage=tgi.usage or Usage(),
    )
    return encode(body)
