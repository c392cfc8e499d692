"""`options:` of a tensorrt_llm backend, one shape per way TensorRT-LLM is served."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from gateway.config_structs import check_struct
from plugins.openai_compat.backend import OpenAICompatOptions

Mode = Literal["trtllm_serve", "triton"]
MODES: tuple[str, ...] = ("trtllm_serve", "triton")


class TrtllmServeOptions(OpenAICompatOptions, forbid_unknown_fields=True, kw_only=True):
    """`mode: trtllm_serve`: NVIDIA's OpenAI-compatible `trtllm-serve` (tensorrt_llm/serve/openai_server.py)."""

    mode: Literal["trtllm_serve"] = "trtllm_serve"


class ChatTemplateSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A chat template spelled out: how each message and the assistant's turn are written as raw text.

    `message` is formatted with `{role}` and `{content}`; the prompt is `bos`, every message,
    then `generation_prompt`. `stop` strings end the assistant's turn (sent as Triton `stop_words`
    and trimmed from the reply).
    """

    message: str
    generation_prompt: str
    bos: str = ""
    stop: list[str] = msgspec.field(default_factory=list)


class TritonOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`mode: triton`: Triton Inference Server with the TensorRT-LLM backend, via the generate extension."""

    mode: Literal["triton"]
    # The Triton model that takes `text_input` (the ensemble of tensorrtllm_backend's
    # all_models/inflight_batcher_llm, or `tensorrt_llm_bls`).
    model_name: str = "ensemble"
    model_version: str | None = None
    # The ensemble takes raw text, so the gateway renders chat messages itself.
    chat_template: str | ChatTemplateSpec = "chatml"
    # `max_tokens` is a required input of the ensemble; used when the client sends none.
    default_max_tokens: int = 512
    # Send `exclude_input_in_output: true` (an optional ensemble input since v0.9); turn off for
    # older model repositories that reject it; an echoed prompt is then cut from the reply.
    exclude_input_in_output: bool = True
    # Ask for `num_input_tokens` / `num_output_tokens` (ensemble inputs `return_num_input_tokens` /
    # `return_num_output_tokens`, recent tensorrtllm_backend); without them usage is estimated.
    token_counts: bool = True
    end_id: int | None = None
    pad_id: int | None = None
    # Extra ensemble inputs sent with every request (e.g. {"beam_width": 1}).
    extra_inputs: dict[str, Any] = msgspec.field(default_factory=dict)
    # Triton serves Prometheus metrics on its own port (--metrics-port, default 8002).
    metrics_url: str | None = None
    # The metrics' `model` label of the TensorRT-LLM model inside the ensemble.
    trtllm_model_label: str | None = None


def mode_of(options: dict[str, Any]) -> str:
    """The configured mode; trtllm-serve when absent, the common deployment."""
    mode = options.get("mode", "trtllm_serve")
    return mode if isinstance(mode, str) else repr(mode)


def check_options(options: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """Every problem of `options` as (key path, message), against the struct of its mode."""
    mode = mode_of(options)
    if mode not in MODES:
        yield ("options.mode", f"must be one of {', '.join(MODES)} (got {mode})")
        return
    kind: type[msgspec.Struct] = TrtllmServeOptions if mode == "trtllm_serve" else TritonOptions
    yield from check_struct(options, kind, "options")
    if mode == "triton" and not check_struct(options, kind, "options"):
        triton = msgspec.convert(options, TritonOptions)
        if triton.default_max_tokens <= 0:
            yield ("options.default_max_tokens", "must be positive")
        if isinstance(triton.chat_template, str):
            from plugins.tensorrt_llm.chat_templates import BUILTIN_TEMPLATES

            if triton.chat_template not in BUILTIN_TEMPLATES:
                known = ", ".join(sorted(BUILTIN_TEMPLATES))
                yield ("options.chat_template", f"unknown template '{triton.chat_template}' (built in: {known})")
