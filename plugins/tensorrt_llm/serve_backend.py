"""`mode: trtllm_serve`: NVIDIA's OpenAI-compatible server, forwarded as OpenAI bytes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from gateway.backend import BackendContext, BackendLoad, BackendUnavailable
from gateway.config import BackendConfig
from gateway.errors import unsupported_parameter
from gateway.schemas import OPENAI_CHAT_PARAMS, OPENAI_COMPLETION_PARAMS, RequestKind
from gateway.upstream import UpstreamError
from plugins.openai_compat.backend import OpenAICompatBackend, OpenAICompatOptions
from plugins.tensorrt_llm.options import TrtllmServeOptions, check_options
from plugins.tensorrt_llm.serve_metrics import IterationLoad

# Request fields trtllm-serve reads beyond OpenAI's own: the "sampling params" and "extra params"
# blocks of ChatCompletionRequest / CompletionRequest (tensorrt_llm/serve/openai_protocol.py). The
# models forbid extra fields, so each kind gets only its own.
_SAMPLING = frozenset({
    "use_beam_search", "top_k", "top_p_min", "min_p", "repetition_penalty", "length_penalty", "early_stopping",
    "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens", "skip_special_tokens",
    "spaces_between_special_tokens", "truncate_prompt_tokens", "add_special_tokens", "priority",
    "thinking_token_budget", "prompt_ignore_length",
})
CHAT_EXTRAS = _SAMPLING | frozenset({
    "best_of", "echo", "add_generation_prompt", "documents", "chat_template", "chat_template_kwargs", "cache_salt",
    "reasoning_effort",
})
COMPLETION_EXTRAS = _SAMPLING | frozenset({"return_context_logits", "detokenize", "response_format"})


class TrtllmServeBackend(OpenAICompatBackend):
    """trtllm-serve: /v1 routes for traffic, /health for health, /metrics (iteration stats) for load."""

    plugin: ClassVar[str] = "tensorrt_llm"
    options_type: ClassVar[type[OpenAICompatOptions]] = TrtllmServeOptions

    def __init__(self, config: BackendConfig, context: BackendContext) -> None:
        super().__init__(config, context)
        extras = frozenset(self.options.extra_params)
        self._params["chat"] = OPENAI_CHAT_PARAMS | CHAT_EXTRAS | extras
        self._params["completion"] = OPENAI_COMPLETION_PARAMS | COMPLETION_EXTRAS | extras
        self._iterations = IterationLoad()

    @classmethod
    def validate_config(cls, config: BackendConfig) -> Iterable[tuple[str, str]]:
        if config.url is None:
            yield ("url", "required key is missing")
        yield from check_options(config.options)

    def check_params(self, kind: RequestKind, body: dict[str, Any]) -> None:
        # CompletionRequest.check_suffix rejects any suffix ("suffix is not supported").
        if kind == "completion" and body.get("suffix") not in (None, ""):
            raise unsupported_parameter("suffix", self.name, self.plugin)

    async def load(self) -> BackendLoad:
        """Active, queued and paused requests and KV blocks from the latest iteration's stats."""
        try:
            status, body = await self.get("/metrics")
        except UpstreamError as err:
            raise BackendUnavailable(self.name, str(err)) from err
        if status != 200:
            return self._iterations.last or BackendLoad()
        return self._iterations.update(body)
