"""OpenAI request bodies -> TGI request bodies, and which OpenAI parameters TGI can honour.

Chat goes to TGI's Messages API, whose request is `ChatRequest` in router/src/lib.rs; text
completions go to `/generate(_stream)`, whose request is `GenerateRequest { inputs, parameters }`
(`GenerateParameters`, same file). The mapping from OpenAI's completion fields follows TGI's own
`/v1/completions` handler (`completions` in router/src/server.rs): `max_tokens` -> `max_new_tokens`,
temperature 0 -> greedy (`do_sample: false`), any other temperature -> sampling.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError, unsupported_parameter
from gateway.schemas import RequestKind
from plugins.tgi.stop_sequences import stop_list

# OpenAI chat fields TGI's `ChatRequest` reads. `n` and `logit_bias` are declared there but marked
# UNUSED (and its logit_bias is a list, not OpenAI's map), so they are not honoured.
CHAT_PARAMS = frozenset({
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens",
    "max_completion_tokens", "stop", "seed", "logprobs", "top_logprobs", "presence_penalty",
    "frequency_penalty", "response_format", "tools", "tool_choice", "user", "n", "parallel_tool_calls",
    "tool_prompt",  # TGI's own: the text put before the tools in the prompt
})
# OpenAI completion fields `/generate` can honour, plus TGI's own sampling and control fields.
COMPLETION_PARAMS = frozenset({
    "model", "prompt", "stream", "stream_options", "temperature", "top_p", "max_tokens", "stop", "seed",
    "logprobs", "echo", "frequency_penalty", "best_of", "n", "user",
    "top_k", "repetition_penalty", "typical_p", "truncate", "watermark", "grammar", "top_n_tokens",
})
# Values that mean "nothing asked": a request carrying them is still honoured exactly.
_NEUTRAL: dict[str, tuple[Any, ...]] = {"n": (1,), "best_of": (1,), "parallel_tool_calls": (False,)}


def _refuse(param: str, backend: str, why: str) -> GatewayError:
    error = unsupported_parameter(param, backend, "tgi")
    error.message += f": {why}"
    return error


def check_params(kind: RequestKind, body: dict[str, Any], backend: str) -> None:
    """Refuse, with a 422 naming the parameter, a value TGI would ignore or answer differently."""
    n = body.get("n")
    if n is not None and n not in _NEUTRAL["n"]:
        raise _refuse("n", backend, "TGI generates one choice per request")
    if kind == "chat":
        if body.get("parallel_tool_calls") is True:
            raise _refuse("parallel_tool_calls", backend, "TGI calls at most one tool per turn")
        response_format = body.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") == "json_object":
            raise _refuse("response_format", backend, "TGI needs a schema: use type json_schema")
        return
    if kind != "completion":
        return
    prompt = body.get("prompt")
    if isinstance(prompt, list) and (len(prompt) != 1 or not isinstance(prompt[0], str)):
        raise _refuse("prompt", backend, "TGI's /generate takes one text prompt (no batches, no token ids)")
    best_of = body.get("best_of")
    if best_of is not None and best_of not in _NEUTRAL["best_of"] and body.get("stream"):
        raise _refuse("best_of", backend, "TGI does not stream best_of")
    if body.get("echo") and body.get("logprobs") is not None:
        raise _refuse("echo", backend, "prompt logprobs are off in TGI 3 unless --enable-prefill-logprobs")


def _top_p(value: Any) -> Any:
    # TGI insists on 0 < top_p < 1 (validation.rs); OpenAI's 1.0 means "no nucleus filtering",
    # which is exactly what leaving it out means to TGI.
    return None if isinstance(value, (int, float)) and value >= 1.0 else value


def _response_format(value: Any) -> Any:
    """OpenAI's `response_format` as TGI's `GrammarType` (`{"type": ..., "value": ...}`)."""
    if not isinstance(value, dict):
        return value
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_schema" and "json_schema" in value:
        spec = value["json_schema"] or {}
        grammar: dict[str, Any] = {"schema": spec.get("schema", {})}
        if spec.get("name"):
            grammar["name"] = spec["name"]
        return {"type": "json_schema", "value": grammar}
    return value  # TGI's own shapes ({"type": "json" | "regex" | "json_schema", "value": ...}) pass as they are


def chat_request(body: dict[str, Any], adapter_id: str | None) -> dict[str, Any]:
    """The `ChatRequest` for TGI: OpenAI's body with the few fields TGI reads differently fixed."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if value is None or key in ("n", "user", "parallel_tool_calls", "max_completion_tokens"):
            continue  # TGI rejects explicit nulls for some fields (stream_options) and ignores these
        out[key] = value
    # "tgi" (or no model) asks for the base model; anything else is taken as a LoRA adapter id.
    out["model"] = adapter_id or "tgi"
    max_tokens = body.get("max_completion_tokens") if body.get("max_completion_tokens") is not None \
        else body.get("max_tokens")
    if max_tokens is not None:
        out["max_tokens"] = max_tokens  # TGI reads max_completion_tokens as an alias: send one of them
    if "stop" in out:
        out["stop"] = stop_list(out["stop"])  # TGI's stop is a list only
    if "top_p" in out and _top_p(out["top_p"]) is None:
        del out["top_p"]
    if "response_format" in out:
        grammar = _response_format(out["response_format"])
        if grammar is None:
            del out["response_format"]
        else:
            out["response_format"] = grammar
    return out


def prompt_text(body: dict[str, Any]) -> str:
    """The one text prompt of a completion request (a one-element list is accepted too)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt else ""
    return prompt if isinstance(prompt, str) else ""


_NATIVE = ("top_k", "repetition_penalty", "typical_p", "truncate", "watermark", "grammar")


def generate_request(body: dict[str, Any], adapter_id: str | None, *, stream: bool) -> dict[str, Any]:
    """`GenerateRequest` for `/generate` or `/generate_stream` from an OpenAI completion body."""
    parameters: dict[str, Any] = {"details": True}
    temperature = body.get("temperature")
    if temperature == 0:
        parameters["do_sample"] = False  # greedy, as TGI's own /v1/completions does for 0
    else:
        parameters["do_sample"] = True
        if temperature is not None:
            parameters["temperature"] = temperature
    if body.get("max_tokens") is not None:
        parameters["max_new_tokens"] = body["max_tokens"]
    top_p = _top_p(body.get("top_p"))
    if top_p is not None:
        parameters["top_p"] = top_p
    stops = stop_list(body.get("stop"))
    if stops:
        parameters["stop"] = stops
    for key in ("seed", "frequency_penalty", *_NATIVE):
        if body.get(key) is not None:
            parameters[key] = body[key]
    logprobs = body.get("logprobs")
    top_n = body.get("top_n_tokens") if body.get("top_n_tokens") is not None else logprobs
    if top_n:
        parameters["top_n_tokens"] = top_n
    best_of = body.get("best_of")
    if not stream and best_of is not None and best_of != 1:
        parameters["best_of"] = best_of
    if adapter_id:
        parameters["adapter_id"] = adapter_id
    return {"inputs": prompt_text(body), "parameters": parameters}
