"""Triton generate responses as OpenAI `chat.completion` / `text_completion` JSON.

A generate response is one JSON object whose keys are the model's outputs
(server docs/protocol/extension_generate.md); for the TensorRT-LLM ensemble that is
`text_output` plus `model_name`, `model_version`, log-prob and batch fields
(tensorrtllm_backend docs/llama.md shows a real one). A single-element output tensor comes
as a scalar, a longer one as a list. Token counts only come when asked for
(`num_input_tokens` / `num_output_tokens`); otherwise usage is estimated and says so.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import msgspec

from gateway.errors import backend_failed
from plugins.tensorrt_llm.stop_words import trim_stop
from plugins.tensorrt_llm.triton_request import TritonCall


class GenerateOutput(msgspec.Struct):
    """The fields of a generate response (or stream event) the gateway reads; others are ignored."""

    text_output: str | list[str] | None = None
    error: str | None = None
    num_input_tokens: int | list[int] | None = None
    num_output_tokens: int | list[int] | None = None


_decode_output = msgspec.json.Decoder(GenerateOutput).decode
_encode = msgspec.json.Encoder().encode


def decode_output(backend: str, payload: bytes) -> GenerateOutput:
    """One generate response; a body that is not one is the backend's failure (502)."""
    try:
        return _decode_output(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise backend_failed(backend, f"unreadable Triton generate response ({err})") from err


def first(value: Any) -> Any:
    """The first element of a list output, or the scalar itself."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def estimate_tokens(text: str) -> int:
    """About four bytes a token: OpenAI's rule of thumb, used only when Triton gives no counts."""
    return math.ceil(len(text.encode("utf-8")) / 4) if text else 0


class Accounting:
    """Token usage of one reply: Triton's own counts when it sent them, an estimate otherwise."""

    __slots__ = ("completion_tokens", "estimated_completion", "prompt", "prompt_tokens", "text")

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.text = ""
        self.estimated_completion = False

    def add(self, output: GenerateOutput, text: str) -> None:
        """Count one response (or stream event) whose new text is `text`."""
        self.text += text
        if self.prompt_tokens is None and (n := first(output.num_input_tokens)) is not None:
            self.prompt_tokens = int(n)
        if (n := first(output.num_output_tokens)) is not None:
            # Each streamed response counts its own new tokens, so they add up.
            self.completion_tokens = (self.completion_tokens or 0) + int(n)

    def usage(self) -> dict[str, Any]:
        prompt = self.prompt_tokens if self.prompt_tokens is not None else estimate_tokens(self.prompt)
        completion = self.completion_tokens if self.completion_tokens is not None else estimate_tokens(self.text)
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion}
        if self.prompt_tokens is None or self.completion_tokens is None:
            usage["estimated"] = True  # Triton sent no counts: these are byte-length estimates
        return usage

    def finish_reason(self, call: TritonCall, stopped: str | None) -> str:
        """`stop` for a stop string or the end token, `length` when max_tokens was used up."""
        if stopped is not None:
            return "stop"
        completion = self.completion_tokens if self.completion_tokens is not None else estimate_tokens(self.text)
        return "length" if completion >= call.max_tokens else "stop"


def strip_prompt(text: str, prompt: str) -> str:
    """Without `exclude_input_in_output` the ensemble returns prompt + reply (docs/model_config.md)."""
    return text[len(prompt):] if prompt and text.startswith(prompt) else text


def response_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(16).hex()}"


def whole_reply(backend: str, kind: str, call: TritonCall, model: str, payload: bytes) -> bytes:
    """A non-streaming generate response as the OpenAI JSON body for `kind`."""
    output = decode_output(backend, payload)
    if output.error is not None:
        raise backend_failed(backend, f"Triton error: {output.error}")
    raw = first(output.text_output)
    if not isinstance(raw, str):
        raise backend_failed(backend, "Triton generate response has no text_output")
    text, stopped = trim_stop(strip_prompt(raw, call.prompt), call.stops)
    accounting = Accounting(call.prompt)
    accounting.add(output, text)
    finish = accounting.finish_reason(call, stopped)
    created = int(time.time())
    if kind == "chat":
        return _encode({
            "id": response_id("chatcmpl"), "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish}],
            "usage": accounting.usage(),
        })
    return _encode({
        "id": response_id("cmpl"), "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": call.echo + text, "logprobs": None, "finish_reason": finish}],
        "usage": accounting.usage(),
    })
