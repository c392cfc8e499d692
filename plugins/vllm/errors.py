"""Putting vLLM's error answers into OpenAI's conventions, keeping vLLM's own messages.

vLLM answers failures with `{"error": {"message", "type", "param", "code"}}` where `code` is
the HTTP status as an integer and `type` a Python-ish class name ("BadRequestError",
"NotFoundError"; vllm/entrypoints/serve/exception_handling/error_response.py). Request
validation errors from pydantic name the field as a location (`"param": "body.top_k"`), and
the context-length check names an internal quantity (`"param": "input_tokens"`). The
generic OpenAI-compatible mapping (plugins/openai_compat/errors.py) already keeps the
message and sorts 4xx from 5xx; this module fixes `param` and `code` so clients can act on
them the way they do on OpenAI's own errors.
"""

from __future__ import annotations

from gateway.backend import BackendUnavailable
from gateway.errors import GatewayError
from gateway.schemas import RequestKind

# vLLM's context-length message (vllm/renderers/*, "This model's maximum context length is
# N tokens. However, your prompt contains at least M input tokens ..."), checked on 0.32.
_CONTEXT_LENGTH = "maximum context length"
_PROMPT_FIELD: dict[RequestKind, str] = {"chat": "messages", "completion": "prompt", "embedding": "input"}


def refine_error(err: GatewayError, kind: RequestKind | None) -> GatewayError:
    """`err` (built from a vLLM error body) with OpenAI-style `param` and `code`; changed in place.

    Server-side failures (`BackendUnavailable`, 5xx) keep their meaning for the router and
    are returned unchanged.
    """
    if isinstance(err, BackendUnavailable) or err.status >= 500:
        return err
    if err.code is not None and err.code.isdigit():
        err.code = None  # vLLM repeats the HTTP status here; OpenAI's codes are words
    if err.param is not None and err.param.startswith("body."):
        err.param = err.param[len("body."):]
    if err.status == 400 and _CONTEXT_LENGTH in err.message:
        # OpenAI reports this as code context_length_exceeded on the prompt field.
        err.code = "context_length_exceeded"
        err.param = _PROMPT_FIELD[kind] if kind is not None else None
    elif err.status == 404 and err.param == "model":
        err.code = "model_not_found"
    return err
