"""llama-server on the wire: OpenAI-style bodies with llama.cpp's extras (`timings`, cached tokens),
stream chunks, its error bodies (`{"error": {"code", "message", "type"}}`), its in-stream
`error: {...}` line, and the /metrics page, as recorded in plugins/llamacpp/fixtures/.
"""

from __future__ import annotations

import secrets
import string
import time
from typing import Any

import msgspec
from aiohttp import web

from plugins.emulation.model import Generation
from plugins.emulation.openai_wire import SSE_DONE, json_response, sse_data

FINGERPRINT = "b0-emulated"  # real: the build tag (b<number>-<commit>, "b0-unknown" for the xllamacpp wheel)
SSE_CONTENT_TYPE = "text/event-stream"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
# tools/server/utils.hpp format_error_response: the error types llama-server knows.
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                500: "server_error", 501: "not_supported_error", 503: "unavailable_error",
                429: "unavailable_error"}  # llama-server has no 429; the emulator's nearest type
_ALNUM = string.ascii_letters + string.digits


def error_response(status: int, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> web.Response:
    body = {"error": {"code": status, "message": message, "type": _ERROR_TYPES.get(status, "server_error"), **extra}}
    return json_response(body, status=status, headers=headers, content_type=JSON_CONTENT_TYPE)


def exceeds_context(prompt_tokens: int, n_ctx: int) -> web.Response:
    """The recorded context check: per-slot n_ctx, with the two numbers as extra fields."""
    body = {"error": {"code": 400, "message": f"request ({prompt_tokens} tokens) exceeds the available context size "
                                              f"({n_ctx} tokens), try increasing it",
                      "type": "exceed_context_size_error", "n_prompt_tokens": prompt_tokens, "n_ctx": n_ctx}}
    return json_response(body, status=400, content_type=JSON_CONTENT_TYPE)


def new_id() -> str:
    """gen_chatcmplid(): "chatcmpl-" and 32 random letters and digits (completions use it too)."""
    return "chatcmpl-" + "".join(secrets.choice(_ALNUM) for _ in range(32))


def finish_of(gen: Generation) -> str:
    return "length" if gen.finish == "length" else "stop"


def timings(prompt_tokens: int, predicted: int, tpot_ms: float) -> dict[str, Any]:
    """The per-request timings llama-server adds to every final answer (fake but consistent numbers)."""
    per_token = float(tpot_ms) or 1.0
    return {"cache_n": 0, "prompt_n": prompt_tokens, "prompt_ms": float(prompt_tokens),
            "prompt_per_token_ms": 1.0, "prompt_per_second": 1000.0, "predicted_n": predicted,
            "predicted_ms": per_token * predicted, "predicted_per_token_ms": per_token,
            "predicted_per_second": 1000.0 / per_token}


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"completion_tokens": completion, "prompt_tokens": prompt, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0}}


def chat_body(model: str, gen: Generation, tpot_ms: float, prefill: str = "") -> dict[str, Any]:
    """A whole chat answer; a continued assistant message comes back whole, prefill included (as observed)."""
    n = len(gen.tokens)
    return {
        "choices": [{"finish_reason": finish_of(gen), "index": 0,
                     "message": {"role": "assistant", "content": prefill + gen.text}}],
        "created": int(time.time()), "model": model, "system_fingerprint": FINGERPRINT, "object": "chat.completion",
        "usage": usage(gen.prompt_tokens, n), "id": new_id(), "timings": timings(gen.prompt_tokens, n, tpot_ms),
    }


def completion_body(model: str, gen: Generation, text: str, tpot_ms: float) -> dict[str, Any]:
    n = len(gen.tokens)
    return {
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_of(gen)}],
        "created": int(time.time()), "model": model, "system_fingerprint": FINGERPRINT, "object": "text_completion",
        "usage": usage(gen.prompt_tokens, n), "id": new_id(), "timings": timings(gen.prompt_tokens, n, tpot_ms),
    }


class LlamaStreamEvents:
    """The SSE events of one llama-server stream (server_task_result_cmpl_partial/final to_json_oaicompat*)."""

    def __init__(self, kind: str, model: str, gen: Generation, *, usage: bool, tpot_ms: float) -> None:
        self.kind = kind
        self.model = model
        self.gen = gen
        self.usage = usage
        self.tpot_ms = tpot_ms
        self.id = new_id()
        self.created = int(time.time())

    def _chunk(self, choices: list[dict[str, Any]], **tail: Any) -> bytes:
        if self.kind == "chat":
            return sse_data({"choices": choices, "created": self.created, "id": self.id, "model": self.model,
                             "system_fingerprint": FINGERPRINT, "object": "chat.completion.chunk", **tail})
        return sse_data({"choices": choices, "created": self.created, "model": self.model,
                         "system_fingerprint": FINGERPRINT, "object": "text_completion", **tail, "id": self.id})

    def opening(self) -> list[bytes]:
        if self.kind != "chat":
            return []
        return [self._chunk([{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}])]

    def token(self, text: str, last: bool) -> bytes:
        # The finish comes in a chunk of its own after the last token (recorded), so `last` changes nothing.
        if self.kind == "chat":
            return self._chunk([{"finish_reason": None, "index": 0, "delta": {"content": text}}])
        return self._chunk([{"text": text, "index": 0, "logprobs": None, "finish_reason": None}])

    def closing(self) -> list[bytes]:
        n = len(self.gen.tokens)
        stats = timings(self.gen.prompt_tokens, n, self.tpot_ms)
        finish = finish_of(self.gen)
        if self.kind == "chat":
            if not self.usage:
                return [self._chunk([{"finish_reason": finish, "index": 0, "delta": {}}], timings=stats), SSE_DONE]
            return [self._chunk([{"finish_reason": finish, "index": 0, "delta": {}}]),
                    self._chunk([], usage=usage(self.gen.prompt_tokens, n), timings=stats), SSE_DONE]
        choice = [{"text": "", "index": 0, "logprobs": None, "finish_reason": finish}]
        tail: dict[str, Any] = {"usage": usage(self.gen.prompt_tokens, n)} if self.usage else {}
        return [self._chunk(choice, **tail, timings=stats), SSE_DONE]

    def error(self) -> list[bytes]:
        """A failed task mid-stream: an `error:` line with format_error_response's body, then the stream ends."""
        body = {"code": 500, "message": "emulated fault: decoding failed mid-stream", "type": "server_error"}
        return [b"error: " + msgspec.json.encode(body) + b"\n\n"]


_COUNTERS = (
    ("prompt_tokens_total", "counter", "Number of prompt tokens processed, excluding cached tokens"),
    ("prompt_tokens_cached_total", "counter", "Number of prompt tokens reused from the cache"),
    ("prompt_seconds_total", "counter", "Total time spent processing prompts"),
    ("tokens_predicted_total", "counter", "Number of generation tokens processed"),
    ("tokens_predicted_seconds_total", "counter", "Total time spent generating tokens"),
    ("n_decode_total", "counter",
     "Total number of llama_decode() calls, excluding speculative decoding and multimodal decoding"),
    ("n_tokens_max", "counter", "Largest observed sequence length (prompt + generation)"),
    ("spec_decode_num_draft_tokens_total", "counter", "Speculative: Total draft tokens generated"),
    ("spec_decode_num_accepted_tokens_total", "counter",
     "Speculative: Total draft tokens accepted by the target model"),
    ("spec_decode_num_drafts_total", "counter", "Speculative: Total speculative decoding verification steps"),
    ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s"),
    ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s"),
    ("requests_processing", "gauge", "Number of requests processing"),
    ("requests_deferred", "gauge", "Number of requests deferred"),
    ("n_busy_slots_per_decode", "gauge", "Average number of busy slots per llama_decode() call"),
)


def metrics_page(values: dict[str, float]) -> str:
    """The page in the recorded order; counters are ints unless fractional (prompt_seconds_total ...)."""
    lines = []
    for name, kind, help_text in _COUNTERS:
        value = values.get(name, 0)
        shown = int(value) if float(value).is_integer() else value
        lines += [f"# HELP llamacpp:{name} {help_text}", f"# TYPE llamacpp:{name} {kind}", f"llamacpp:{name} {shown}"]
    return "\n".join(lines) + "\n"
