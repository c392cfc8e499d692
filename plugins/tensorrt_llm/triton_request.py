"""OpenAI request bodies as Triton generate requests for the TensorRT-LLM ensemble.

The input names are those of tensorrtllm_backend's ensemble model
(NVIDIA/TensorRT-LLM triton_backend/all_models/inflight_batcher_llm/ensemble/config.pbtxt):
`text_input`, `max_tokens` (both required), optional `bad_words`, `stop_words`, `end_id`,
`pad_id`, `top_k`, `top_p`, `temperature`, `presence_penalty`, `frequency_penalty`,
`repetition_penalty`, `min_tokens`, `length_penalty`, `seed`, `stream`,
`exclude_input_in_output`, `return_num_input_tokens`, `return_num_output_tokens`. Triton's
generate extension takes each input as a top-level key of the JSON body
(server docs/protocol/extension_generate.md: "Any additional properties in the request
object are passed either as parameters or tensors based on model specification").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError, unsupported_parameter
from gateway.schemas import RequestKind
from plugins.tensorrt_llm.chat_templates import render_chat, resolve_template
from plugins.tensorrt_llm.options import TritonOptions

# OpenAI parameters the ensemble can honour, per request kind.
_CHAT = frozenset({
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "n", "max_tokens",
    "max_completion_tokens", "stop", "seed", "presence_penalty", "frequency_penalty", "user",
})
_COMPLETION = frozenset({
    "model", "prompt", "stream", "stream_options", "temperature", "top_p", "n", "max_tokens", "stop",
    "seed", "presence_penalty", "frequency_penalty", "echo", "best_of", "user",
})
# Ensemble inputs a client may set directly (beyond OpenAI's names).
NATIVE_INPUTS = frozenset({
    "top_k", "bad_words", "end_id", "pad_id", "repetition_penalty", "min_tokens", "length_penalty",
})
SUPPORTED: dict[str, frozenset[str]] = {
    "chat": _CHAT | NATIVE_INPUTS,
    "completion": _COMPLETION | NATIVE_INPUTS,
    "embedding": frozenset({"model", "input", "encoding_format", "dimensions", "user"}),
}
# OpenAI name -> ensemble input name, where they differ or simply carry over.
_SAMPLING = (
    ("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
    ("presence_penalty", "presence_penalty"), ("frequency_penalty", "frequency_penalty"),
)


@dataclass(frozen=True, slots=True)
class TritonCall:
    """What was sent to Triton and what the reply must be checked against."""

    body: dict[str, Any]
    prompt: str
    stops: list[str]  # stop strings to cut from the reply (the client's and the template's)
    max_tokens: int
    echo: str  # prefix the client asked to get back (completions with echo)


def check_request(kind: RequestKind, body: dict[str, Any], backend: str, plugin: str) -> None:
    """422 for values the ensemble cannot honour although the parameter is known."""
    n = body.get("n")
    if n is not None and n != 1:
        raise unsupported_parameter("n", backend, plugin)
    if kind != "completion":
        return
    best_of = body.get("best_of")
    if best_of is not None and (isinstance(best_of, bool) or best_of != 1):
        raise unsupported_parameter("best_of", backend, plugin)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and not (len(prompt) == 1 and isinstance(prompt[0], str)):
        raise GatewayError(
            422,
            f"backend '{backend}' (Triton) takes one text prompt per request, not token ids or a batch",
            param="prompt",
            code="unsupported_parameter",
        )


def _stop_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [s for s in value if isinstance(s, str)]


def build_call(kind: RequestKind, body: dict[str, Any], options: TritonOptions, *, stream: bool) -> TritonCall:
    """The generate body for an OpenAI chat or completion request."""
    stops = _stop_list(body.get("stop"))
    echo = ""
    if kind == "chat":
        template = resolve_template(options.chat_template)
        prompt = render_chat(template, body.get("messages") or [])
        stops = stops + [s for s in template.stop if s not in stops]
    else:
        raw = body.get("prompt")
        prompt = raw[0] if isinstance(raw, list) else str(raw)
        if body.get("echo"):
            echo = prompt
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or options.default_max_tokens
    request: dict[str, Any] = dict(options.extra_inputs)
    request["text_input"] = prompt
    request["max_tokens"] = int(max_tokens)
    for openai_name, input_name in _SAMPLING:
        if body.get(openai_name) is not None:
            request[input_name] = body[openai_name]
    for name in NATIVE_INPUTS:
        if body.get(name) is not None:
            request[name] = body[name]
    if options.end_id is not None:
        request.setdefault("end_id", options.end_id)
    if options.pad_id is not None:
        request.setdefault("pad_id", options.pad_id)
    if stops:
        request["stop_words"] = stops
    if options.exclude_input_in_output:
        request["exclude_input_in_output"] = True
    if options.token_counts:
        request["return_num_input_tokens"] = True
        request["return_num_output_tokens"] = True
    request["stream"] = stream
    return TritonCall(body=request, prompt=prompt, stops=stops, max_tokens=int(max_tokens), echo=echo)
