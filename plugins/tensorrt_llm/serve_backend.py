"""`mode: trtllm_serve`: NVIDIA's OpenAI-compatible server, forwarded as OpenAI bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, ClassVar

import msgspec

from gateway.backend import BackendContext, BackendLoad, BackendUnavailable
from gateway.config import BackendConfig
from gateway.errors import backend_failed, unsupported_parameter
from gateway.schemas import OPENAI_CHAT_PARAMS, OPENAI_COMPLETION_PARAMS, RequestKind
from gateway.upstream import UpstreamError
from plugins.openai_compat.backend import OpenAICompatBackend, OpenAICompatOptions
from plugins.openai_compat.stream import OpenAIEventStream
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


class _AnyObject(msgspec.Struct):
    """Decoding into a field-less Struct checks an event is one JSON object, cheaply."""


_check_object = msgspec.json.Decoder(_AnyObject).decode


def _malformed(events: bytes) -> tuple[bytes, str | None]:
    """(the events before the first whose data is not a JSON object, why) for a run of whole events."""
    good: list[bytes] = []
    for event in events.split(b"\n\n")[:-1]:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                continue
            try:
                _check_object(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                return b"".join(good), f"malformed stream event ({err})"
        good.append(event + b"\n\n")
    return events, None


class CheckedEventStream:
    """trtllm-serve's SSE passed through, but an event that is not JSON ends it with an error.

    The OpenAI-compatible stream forwards bytes without decoding them; a client would then
    choke on the broken event with no word from the gateway, so each event is checked here.
    """

    def __init__(self, backend: str, inner: OpenAIEventStream) -> None:
        self._backend = backend
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for events in self._inner:
            good, problem = _malformed(events)
            if problem is not None:
                if good:
                    yield good
                raise backend_failed(self._backend, problem)
            yield events

    async def aclose(self) -> None:
        await self._inner.aclose()


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

    async def stream_chat(self, body: dict[str, Any]) -> CheckedEventStream:  # type: ignore[override]
        return CheckedEventStream(self.name, await super().stream_chat(body))

    async def stream_completion(self, body: dict[str, Any]) -> CheckedEventStream:  # type: ignore[override]
        return CheckedEventStream(self.name, await super().stream_completion(body))

    async def load(self) -> BackendLoad:
        """Active, queued and paused requests and KV blocks from the latest iteration's stats."""
        try:
            status, body = await self.get("/metrics")
        except UpstreamError as err:
            raise BackendUnavailable(self.name, str(err)) from err
        if status != 200:
            return self._iterations.last or BackendLoad()
        return self._iterations.update(body)
