"""TGI's request validation, message for message.

Rules, order and wording follow `Validation::validate` / `validate_input` and `ValidationError`
in huggingface/text-generation-inference router/src/validation.rs; the stream-only checks are
in `generate_stream_internal` (router/src/server.rs); the chat -> generate conversion is
`ChatRequest::try_into_generate` (router/src/lib.rs). `InferError::ValidationError` prefixes
every message with "Input validation error: " (router/src/infer/mod.rs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from plugins.tgi.emulator.requests import ChatRequest, Parameters

# validation.rs: `static DEFAULT_GENERATION_LENGTH: u32 = 1024;` - TGI 3 schedules at most this
# many new tokens at a time and checks only that many against max_total_tokens.
DEFAULT_GENERATION_LENGTH = 1024


class ValidationFailure(Exception):
    """A `ValidationError`; `str()` is TGI's message without the "Input validation error: " prefix."""


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The launcher's limits the router validates against (docs/source/reference/launcher.md)."""

    max_input_tokens: int = 4095
    max_total_tokens: int = 4096
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_best_of: int = 2
    max_client_batch_size: int = 4


@dataclass(frozen=True, slots=True)
class Valid:
    """What validation computes: the input length and how many tokens may be generated."""

    input_length: int
    max_new_tokens: int | None  # None: as many as max_total_tokens leaves room for
    sampling: bool


def _sampling(p: Parameters) -> bool:
    return p.do_sample or p.temperature is not None or p.top_k is not None or p.top_p is not None \
        or p.typical_p is not None


def _check_grammar(p: Parameters) -> None:
    if p.grammar is None or p.grammar.type == "regex":
        return
    value = p.grammar.value
    if p.grammar.type in ("json", "json_object"):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as err:
                raise ValidationFailure(f"grammar is not valid: {err}") from err
        if not isinstance(value, dict):
            raise ValidationFailure("grammar is not supported")
    elif p.grammar.type == "json_schema":
        value = value.get("schema") if isinstance(value, dict) else None
    if not isinstance(value, dict) or "properties" not in value:
        raise ValidationFailure("grammar is not valid: Grammar must have a 'properties' field")


def validate(p: Parameters, inputs: str, input_tokens: int, limits: ServerLimits) -> Valid:
    """`Validation::validate`: raise `ValidationFailure` with TGI's message, or say what fits."""
    best_of = p.best_of if p.best_of is not None else 1
    sampling = _sampling(p)
    if best_of > 1 and not sampling:
        raise ValidationFailure("you must use sampling when `best_of` is > 1")
    if (p.temperature if p.temperature is not None else 1.0) <= 0.0:
        raise ValidationFailure("`temperature` must be strictly positive")
    if (p.repetition_penalty if p.repetition_penalty is not None else 1.0) <= 0.0:
        raise ValidationFailure("`repetition_penalty` must be strictly positive")
    if not -2.0 <= (p.frequency_penalty or 0.0) <= 2.0:
        raise ValidationFailure("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if p.top_p is not None and not 0.0 < p.top_p < 1.0:
        raise ValidationFailure("`top_p` must be > 0.0 and < 1.0")
    if p.typical_p is not None and not 0.0 < p.typical_p < 1.0:
        raise ValidationFailure("`typical_p` must be > 0.0 and < 1.0")
    if p.top_k is not None and p.top_k <= 0:
        raise ValidationFailure("`top_k` must be strictly positive")
    if p.max_new_tokens == 0:
        raise ValidationFailure("`max_new_tokens` must be strictly positive")
    if len(p.stop) > limits.max_stop_sequences:
        raise ValidationFailure(
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(p.stop)}")
    if p.seed is not None and best_of > 1:
        raise ValidationFailure("`seed` must not be set when `best_of` > 1")
    if p.top_n_tokens is not None and p.top_n_tokens > limits.max_top_n_tokens:
        raise ValidationFailure(
            f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {p.top_n_tokens}")
    if not inputs:
        raise ValidationFailure("`inputs` cannot be empty")
    if p.truncate is not None and (p.truncate == 0 or p.truncate > limits.max_input_tokens):
        raise ValidationFailure(
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. Given: {p.truncate}")
    input_length = min(input_tokens, p.truncate) if p.truncate is not None else input_tokens
    if p.max_new_tokens is not None:
        scheduled = min(p.max_new_tokens, DEFAULT_GENERATION_LENGTH)
    else:
        scheduled = min(max(limits.max_total_tokens - input_length, 0), DEFAULT_GENERATION_LENGTH)
    if input_length + scheduled > limits.max_total_tokens:
        raise ValidationFailure(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {scheduled} `max_new_tokens`")
    if input_length > limits.max_input_tokens:
        raise ValidationFailure(
            f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_length}")
    _check_grammar(p)
    if best_of > 1 and best_of > limits.max_best_of:  # `validate_best_of`, on the best_of path only
        raise ValidationFailure(f"`best_of` must be > 0 and <= {limits.max_best_of}. Given: {best_of}")
    return Valid(input_length=input_length, max_new_tokens=p.max_new_tokens, sampling=sampling)


def stream_refusal(p: Parameters) -> str | None:
    """The checks `generate_stream_internal` makes before anything else (as an SSE error event)."""
    if (p.best_of if p.best_of is not None else 1) != 1:
        return "`best_of` != 1 is not supported when streaming tokens"
    if p.decoder_input_details:
        return "`decoder_input_details` == true is not supported when streaming tokens"
    return None


class ToolError(Exception):
    """`InferError::ToolError`: 422 with `error_type: tool_error`."""


def chat_parameters(chat: ChatRequest) -> Parameters:
    """`ChatRequest::try_into_generate`: the generate parameters of a chat request."""
    if chat.response_format is not None and chat.tools is not None:
        raise ToolError("Grammar and tools are mutually exclusive")
    greedy = chat.temperature == 0.0
    return Parameters(
        temperature=None if greedy else chat.temperature,
        # TGI's mapping of OpenAI's presence penalty onto its repetition penalty
        repetition_penalty=chat.presence_penalty + 2.0 if chat.presence_penalty is not None else None,
        frequency_penalty=chat.frequency_penalty, top_p=chat.top_p, do_sample=not greedy,
        max_new_tokens=chat.max_tokens, stop=chat.stop or [], details=True, seed=chat.seed,
        top_n_tokens=chat.top_logprobs, grammar=chat.response_format,
        adapter_id=chat.model if chat.model not in (None, "tgi") else None,
    )
