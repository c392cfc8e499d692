"""Triton's generate wire format for the TensorRT-LLM ensemble: request checks, responses, errors, metrics.

Sources, cited where each detail is built:
- [gen]  triton-inference-server/server docs/protocol/extension_generate.md
- [http] triton-inference-server/server src/http_server.cc (HttpCodeFromError, EVBufferAddErrorJson,
         GenerateRequestClass::{ConvertGenerateRequest, FinalizeResponse, AddErrorJson, StartResponse})
- [json] triton-inference-server/common include/triton/common/triton_json.h (type error messages)
- [core] triton-inference-server/core src/infer_request.cc, src/model_repository_manager.cc,
         src/scheduler_utils.cc (RequestQueue: "Exceeds maximum queue size")
- [ens]  NVIDIA/TensorRT-LLM triton_backend/all_models/inflight_batcher_llm/ensemble/config.pbtxt
- [docs] triton-inference-server/tensorrtllm_backend docs/llama.md, docs/multimodal.md, README.md
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

_encode = msgspec.json.Encoder(order="sorted").encode

# [ens] the ensemble's inputs and their JSON kinds: s string, ss strings, i int, u unsigned,
# f number, b bool. Two are required (not `optional: true`): text_input and max_tokens.
ENSEMBLE_INPUTS: dict[str, str] = {
    "text_input": "s", "decoder_text_input": "s", "max_tokens": "i", "num_return_sequences": "i",
    "bad_words": "ss", "stop_words": "ss", "exclude_input_in_output": "b", "end_id": "i", "pad_id": "i",
    "top_k": "i", "top_p": "f", "temperature": "f", "length_penalty": "f", "repetition_penalty": "f",
    "min_tokens": "i", "presence_penalty": "f", "frequency_penalty": "f", "seed": "u",
    "return_log_probs": "b", "return_context_logits": "b", "return_generation_logits": "b",
    "return_perf_metrics": "b", "return_num_input_tokens": "b", "return_num_output_tokens": "b",
    "beam_width": "i", "stream": "b", "prompt_embedding_table": "f", "prompt_table_extra_id": "u",
    "prompt_vocab_size": "i", "embedding_bias_words": "ss", "embedding_bias_weights": "f",
    "lora_task_id": "u", "lora_weights": "f", "lora_config": "i", "guided_decoding_guide_type": "s",
    "guided_decoding_guide": "s",
}
REQUIRED = ("text_input", "max_tokens")

# [json] TritonJson's messages when a value is read as the wrong type.
_TYPE_ERRORS = {
    "s": "attempt to access JSON non-string as string",
    "i": "attempt to access JSON non-signed-integer as signed-integer",
    "u": "attempt to access JSON non-unsigned-integer as unsigned-integer",
    "f": "attempt to access JSON non-number as double",
    "b": "attempt to access JSON non-boolean as boolean",
}


class TritonError(Exception):
    """A Triton error: HTTP status from its code ([http] HttpCodeFromError) and its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(message: str) -> bytes:
    """[http] EVBufferAddErrorJson: `{"error": "<message>"}`."""
    return msgspec.json.encode({"error": message})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """[gen] "If the request fails before inference begins, then a JSON error will be returned with
    Content-Type of application/json"."""
    return web.Response(status=status, body=error_body(message),
                        headers={"Content-Type": "application/json", **(headers or {})})


def _check_value(name: str, kind: str, value: Any) -> None:
    items = value if isinstance(value, list) else [value]
    scalar = kind[0]
    for item in items:
        ok = {
            "s": isinstance(item, str),
            "i": isinstance(item, int) and not isinstance(item, bool),
            "u": isinstance(item, int) and not isinstance(item, bool) and item >= 0,
            "f": isinstance(item, (int, float)) and not isinstance(item, bool),
            "b": isinstance(item, bool),
        }[scalar]
        if not ok:
            raise TritonError(400, _TYPE_ERRORS[scalar])  # INVALID_ARG -> 400


def parse_request(body: bytes, model: str, known: dict[str, str] | None = None,
                  required: tuple[str, ...] = REQUIRED) -> dict[str, Any]:
    """The inputs of a generate request, checked as Triton checks them: the ensemble's by default,
    or another model's (`known`: input name -> JSON kind, `required`: its non-optional inputs)."""
    known = ENSEMBLE_INPUTS if known is None else known
    try:
        request = msgspec.json.decode(body) if body else {}
    except msgspec.DecodeError as err:
        # [json] Parse: "failed to parse the request JSON buffer: <rapidjson error> at <offset>".
        raise TritonError(400, "failed to parse the request JSON buffer: Invalid value. at 0") from err
    if not isinstance(request, dict):
        raise TritonError(400, "attempt to get members for non-object")
    inputs: dict[str, Any] = {}
    for key, value in request.items():
        if key == "parameters":
            # [http] ConvertGenerateRequest: `parameters` is a nested schema whose members map to
            # inputs by name like top-level keys (docs/multimodal.md sends max_tokens there).
            if not isinstance(value, dict):
                raise TritonError(400, "Expected JSON object for keyword: 'parameters'")
            for name, item in value.items():
                if name in known:
                    inputs[name] = item
                elif isinstance(item, (dict, list)):
                    raise TritonError(
                        400, f"Converting keyword: 'parameters': parameter '{name}' has invalid type.")
        elif key in known:
            inputs[key] = value
        elif key != "id" and isinstance(value, (dict, list)):
            # [gen] other keys become request parameters, which must be scalars.
            raise TritonError(400, f"parameter '{key}' has invalid type.")
    for name, value in inputs.items():
        _check_value(name, known[name], value)
    missing = [name for name in required if name not in inputs]
    if missing:
        # [core] infer_request.cc ValidateRequestInputs (as quoted in server qa/L0_input_validation).
        got = ",".join(f"'{n}'" for n in inputs)
        need = ",".join(f"'{n}'" for n in missing)
        raise TritonError(
            400,
            f"[request id: <id_unknown>] expected number of inputs between {len(required)} and "
            f"{len(known)} but got {len(inputs)} inputs for model '{model}'. Got input(s) [{got}], "
            f"but missing required input(s) [{need}]. Please provide all required input(s).",
        )
    if isinstance(request.get("id"), str) and request["id"]:
        inputs["__id__"] = request["id"]
    return inputs


def strings(value: Any) -> list[str]:
    """A string-list input: the docs send `""` for none ([docs] llama.md `"stop_words": ""`)."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [s for s in items if isinstance(s, str) and s]


def _tensor(values: list[float]) -> float | list[float]:
    # [docs] a one-element output tensor is written as a scalar (cum_log_probs: 0.0), a longer one as a list.
    return values[0] if len(values) == 1 else values


def generate_response(model: str, text: str, tokens: int, inputs: dict[str, Any], prompt_tokens: int) -> bytes:
    """One generate response object: the ensemble's outputs plus id/model_name/model_version.

    [http] FinalizeResponse adds "id" (only when the request had one), "model_name",
    "model_version" and every output; TritonJson writes keys in std::map order (sorted).
    Field set and types as in [docs] multimodal.md's generate_stream example.
    """
    response: dict[str, Any] = {
        "batch_index": 0,
        "context_logits": 0.0,
        "cum_log_probs": 0.0,
        "generation_logits": 0.0,
        "model_name": model,
        "model_version": "1",
        "output_log_probs": _tensor([0.0] * tokens),
        "sequence_end": False,
        "sequence_id": 0,
        "sequence_index": 0,
        "sequence_start": False,
        "text_output": text,
    }
    if "__id__" in inputs:
        response["id"] = inputs["__id__"]
    # [ens] outputs num_input_tokens / num_output_tokens, sent when return_num_*_tokens is set.
    if inputs.get("return_num_input_tokens") is True:
        response["num_input_tokens"] = prompt_tokens
    if inputs.get("return_num_output_tokens") is True:
        response["num_output_tokens"] = tokens
    return _encode(response)


def sse_event(payload: bytes) -> bytes:
    """[http] FinalizeResponse / AddErrorJson when streaming: "data: " + JSON + "\\n\\n"."""
    return b"data: " + payload + b"\n\n"
