"""The request fields vLLM 0.32 honours beyond OpenAI's own, and the legacy guided-decoding names.

Source: vllm/entrypoints/openai/chat_completion/protocol.py (`ChatCompletionRequest`) and
vllm/entrypoints/openai/completion/protocol.py (`CompletionRequest`) of vllm 0.32.0. vLLM's
request models allow unknown fields and *ignore* them (serve/engine/protocol.py,
`OpenAIBaseModel.__log_extra_fields__`), so a field missing here must be refused by the
gateway (422) rather than forwarded: forwarded, it would be silently dropped.
"""

from __future__ import annotations

from typing import Any

# Sampling and prompt-handling fields both endpoints read (the `sampling-params` block of
# both request models), checked against the real 0.32 server: each changes the output or
# is validated by it.
_SAMPLING = frozenset({
    "use_beam_search", "top_k", "min_p", "repetition_penalty", "length_penalty", "watermarking",
    "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens", "skip_special_tokens",
    "spaces_between_special_tokens", "truncate_prompt_tokens", "truncation_side", "prompt_logprobs",
    "logprob_token_ids", "allowed_token_ids", "bad_words", "structured_outputs", "priority",
    "request_id", "session_id", "return_tokens_as_token_ids", "return_token_ids", "cache_salt",
    "vllm_xargs", "repetition_detection", "thinking_token_budget", "stream_interval",
    "add_special_tokens",
})

# Chat-only extras (chat templating, reasoning, RAG documents, multimodal processor knobs).
# `echo` here is vLLM's own: prepend the last message when it has the assistant role.
_CHAT_ONLY = frozenset({
    "echo", "add_generation_prompt", "continue_final_message", "documents", "chat_template",
    "chat_template_kwargs", "media_io_kwargs", "mm_processor_kwargs", "return_prompt_text",
    "reasoning_effort", "include_reasoning",
})

# Completion-only extras: `prompt_embeds` needs the server's --enable-prompt-embeds (vLLM
# answers 400 otherwise); `response_format` is OpenAI's chat field that vLLM also reads here.
_COMPLETION_ONLY = frozenset({"prompt_embeds", "response_format"})

# Deliberately absent: kv_transfer_params / ec_transfer_params (disaggregated-serving
# internals), routed_experts_prompt_start, return_token_offsets, mm_payload, return_mm_kwargs
# (documented as ignored outside the /render endpoints), and guided_decoding_backend (the
# per-request backend choice was removed; the server's --structured-outputs-config decides).

# vLLM < 0.11 took structured-output constraints as top-level `guided_*` fields. 0.32 ignores
# them with only a warning in its log (`_REMOVED_GUIDED_FIELDS`), so a client written for
# older vLLM would get unconstrained output. The plugin moves them into `structured_outputs`
# (vllm/sampling_params.py, `StructuredOutputsParams`: json, regex, choice, grammar,
# whitespace_pattern), which keeps such clients correct.
LEGACY_GUIDED: dict[str, str] = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
    "guided_whitespace_pattern": "whitespace_pattern",
}

CHAT_PARAMS: frozenset[str] = _SAMPLING | _CHAT_ONLY | frozenset(LEGACY_GUIDED)
COMPLETION_PARAMS: frozenset[str] = _SAMPLING | _COMPLETION_ONLY | frozenset(LEGACY_GUIDED)


def translate_legacy_guided(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with any `guided_*` field moved into `structured_outputs`; `body` itself is untouched.

    The dispatcher hands the same dict to every candidate backend, so the rewrite goes into a
    copy. A constraint given both ways is left for vLLM to reject ("only one kind of
    structured outputs constraint").
    """
    if not any(key in body for key in LEGACY_GUIDED):
        return body
    out = dict(body)
    existing = out.get("structured_outputs")
    structured: dict[str, Any] = dict(existing) if isinstance(existing, dict) else {}
    for legacy, field in LEGACY_GUIDED.items():
        value = out.pop(legacy, None)
        if value is not None:
            structured.setdefault(field, value)
    if structured:
        out["structured_outputs"] = structured
    return out
