"""trtllm-serve's wire format: request checks, error bodies, responses and stream chunks.

Sources, cited where each detail is built (all in NVIDIA/TensorRT-LLM unless noted):
- [srv]   tensorrt_llm/serve/openai_server.py (routes, validation_exception_handler,
          create_error_response, chat_stream_generator, get_iteration_stats)
- [proto] tensorrt_llm/serve/openai_protocol.py (ChatCompletionRequest, CompletionRequest,
          ErrorResponse, ChatCompletionResponse, UsageInfo, stream responses; extra="forbid")
- [post]  tensorrt_llm/serve/postprocess_handlers.py (chat/completion stream and response post-processors)
- [guide] docs/source/deployment-guide/deployment-guide-for-gpt-oss-on-trtllm.md and
          quick-start-recipe-for-llama3.3-70b-on-trtllm.md (real responses)
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec
from aiohttp import web

from plugins.emulation.openai_wire import json_response

# [proto] the fields each request model declares; any other is "extra_forbidden".
CHAT_FIELDS = frozenset({
    "messages", "prompt_token_ids", "prompt_token_ids_b64", "model", "frequency_penalty", "logit_bias", "logprobs",
    "top_logprobs", "max_completion_tokens", "max_tokens", "n", "presence_penalty", "response_format", "seed",
    "stop", "stream", "stream_options", "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls",
    "user", "reasoning_effort", "thinking", "thinking_token_budget", "prompt_ignore_length", "best_of",
    "use_beam_search", "top_k", "top_p_min", "min_p", "repetition_penalty", "length_penalty", "early_stopping",
    "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens", "skip_special_tokens",
    "spaces_between_special_tokens", "truncate_prompt_tokens", "lora_request", "echo", "add_generation_prompt",
    "add_special_tokens", "documents", "chat_template", "chat_template_kwargs", "injected_chat_template_kwargs",
    "media_io_kwargs", "disaggregated_params", "conversation_params", "cache_salt", "priority", "agent_hierarchy",
    "mm_processor_kwargs",
})
COMPLETION_FIELDS = frozenset({
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user",
    "lora_request", "prompt_ignore_length", "use_beam_search", "top_k", "top_p_min", "min_p", "repetition_penalty",
    "length_penalty", "early_stopping", "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
    "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens", "return_context_logits",
    "detokenize", "thinking_token_budget", "add_special_tokens", "response_format", "disaggregated_params",
    "priority", "conversation_params",
})
_REQUIRED = {"chat": ("messages", "model"), "completion": ("model", "prompt")}
_INTS = ("max_tokens", "max_completion_tokens", "n", "seed", "top_k", "min_tokens")
_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty")


class RequestInvalid(Exception):
    """A body FastAPI refuses before the handler runs (RequestValidationError)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(str(errors))
        self.errors = errors


def validation_error(err: RequestInvalid) -> web.Response:
    """[srv] validation_exception_handler: 400 with `{"error": str(exc)}` (pydantic's error list)."""
    return json_response({"error": str(err.errors)}, status=400)


def error_response(status: int, message: str, headers: dict[str, str] | None = None,
                   err_type: str = "BadRequestError") -> web.Response:
    """[srv] create_error_response: ErrorResponse(object="error", message, type, param=None, code=status)."""
    if status == 500:
        # An exception escaping a handler: Starlette's ServerErrorMiddleware answers plain text.
        return web.Response(status=500, text="Internal Server Error", headers=headers or {})
    types = {503: "ServiceUnavailableError", 429: "RateLimitError"}
    body = {"object": "error", "message": message, "type": types.get(status, err_type), "param": None,
            "code": status}
    return json_response(body, status=status, headers=headers)


def parse_request(raw: bytes, kind: str) -> dict[str, Any]:
    """The request body, checked as [proto]'s pydantic models check it."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as err:
        raise RequestInvalid([{"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error",
                               "input": {}, "ctx": {"error": str(err)}}]) from err
    if not isinstance(body, dict):
        raise RequestInvalid([{"type": "model_attributes_type", "loc": ("body",),
                               "msg": "Input should be a valid dictionary or object to extract fields from",
                               "input": body}])
    fields = CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS
    errors: list[dict[str, Any]] = []
    errors += [{"type": "missing", "loc": ("body", name), "msg": "Field required", "input": body}
               for name in _REQUIRED[kind] if name not in body]
    errors += [{"type": "extra_forbidden", "loc": ("body", name), "msg": "Extra inputs are not permitted",
                "input": value} for name, value in body.items() if name not in fields]
    for name in _INTS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            errors.append({"type": "int_type", "loc": ("body", name), "msg": "Input should be a valid integer",
                           "input": value})
    for name in _NUMBERS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            errors.append({"type": "float_type", "loc": ("body", name), "msg": "Input should be a valid number",
                           "input": value})
    if kind == "chat" and "messages" in body and not isinstance(body["messages"], list):
        errors.append({"type": "list_type", "loc": ("body", "messages"), "msg": "Input should be a valid list",
                       "input": body["messages"]})
    if errors:
        raise RequestInvalid(errors)
    # [proto] model_validator(mode="before") checks, raised as ValueError inside validation.
    if body.get("stream_options") and not body.get("stream"):
        raise _value_error(body, "Stream options can only be defined when stream is true.")
    if kind == "completion" and body.get("suffix"):
        raise _value_error(body, "suffix is not supported")
    return body


def _value_error(body: dict[str, Any], message: str) -> RequestInvalid:
    return RequestInvalid([{"type": "value_error", "loc": ("body",), "msg": f"Value error, {message}",
                            "input": body, "ctx": {"error": message}}])


def new_id(prefix: str) -> str:
    """[proto] default ids: f"chatcmpl-{uuid4().hex}" / f"cmpl-{uuid4().hex}"."""
    return f"{prefix}-{os.urandom(16).hex()}"


def usage(prompt: int, completion: int, *, details: bool) -> dict[str, Any]:
    """[proto] UsageInfo field order: prompt_tokens, total_tokens, completion_tokens[, prompt_tokens_details]."""
    out: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                           "completion_tokens": completion}
    if details:
        out["prompt_tokens_details"] = {"cached_tokens": 0}
    return out


def chat_response(model: str, text: str, finish: str, stop_reason: str | None, prompt: int,
                  completion: int) -> dict[str, Any]:
    """[guide] gpt-oss guide's response: ChatCompletionResponse.model_dump() field for field."""
    return {
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "reasoning_content": None,
                                             "tool_calls": []},
                     "logprobs": None, "finish_reason": finish, "stop_reason": stop_reason,
                     "mm_embedding_handle": None, "disaggregated_params": None, "avg_decoded_tokens_per_iter": 1.0}],
        "usage": usage(prompt, completion, details=False),
        "prompt_token_ids": None,
    }


def completion_response(model: str, text: str, finish: str, stop_reason: str | None, prompt: int,
                        completion: int) -> dict[str, Any]:
    """[guide] llama3.3 recipe's response: CompletionResponse.model_dump() field for field."""
    return {
        "id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "token_ids": None, "logprobs": None, "context_logits": None,
                     "finish_reason": finish, "stop_reason": stop_reason, "disaggregated_params": None}],
        "usage": usage(prompt, completion, details=False),
        "prompt_token_ids": None,
    }


class ChunkFormat:
    """The SSE events of one streamed response, as [post] writes them."""

    def __init__(self, kind: str, model: str) -> None:
        self.kind = kind
        self.head = {"id": new_id("chatcmpl" if kind == "chat" else "cmpl"),
                     "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                     "created": int(time.time()), "model": model}

    def role(self) -> bytes:
        """[post] yield_first_chat: role only, exclude_none, and framed `data: {..} \\n\\n` (a space)."""
        chunk = {**self.head, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
        return b"data: " + msgspec.json.encode(chunk) + b" \n\n"

    def text(self, text: str, finish: str | None, stop_reason: str | None) -> bytes:
        if self.kind == "chat":
            # [post] DeltaMessage(content, reasoning_content="") dumped with exclude_none.
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text, "reasoning_content": ""},
                                      "avg_decoded_tokens_per_iter": 1.0}
            if finish is not None:
                choice["finish_reason"] = finish
            if stop_reason is not None:
                choice["stop_reason"] = stop_reason
            return b"data: " + msgspec.json.encode({**self.head, "choices": [choice]}) + b"\n\n"
        # [post] completion chunks are dumped with every field, nulls included.
        choice = {"index": 0, "text": text, "token_ids": None, "logprobs": None, "finish_reason": finish,
                  "stop_reason": stop_reason, "avg_decoded_tokens_per_iter": 1.0}
        return b"data: " + msgspec.json.encode({**self.head, "choices": [choice], "usage": None}) + b"\n\n"

    def usage(self, prompt: int, completion: int) -> bytes:
        """[post] the final usage chunk: choices=[], model_dump_json() with prompt_tokens_details."""
        chunk: dict[str, Any] = {**self.head, "choices": [], "usage": usage(prompt, completion, details=True)}
        return b"data: " + msgspec.json.encode(chunk) + b"\n\n"
