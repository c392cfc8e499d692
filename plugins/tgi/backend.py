"""`TGIBackend`: Hugging Face text-generation-inference behind the gateway's OpenAI API.

Chat goes to TGI's Messages API (`/v1/chat/completions`, which applies the model's chat
template), text completions to its native `/generate` and `/generate_stream`, whose answers
are rebuilt in OpenAI's shape. Limits come from `/info`, load from `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any, ClassVar

import msgspec

from gateway.backend import BackendContext, BackendLoad, Capabilities
from gateway.config import BackendConfig
from gateway.config_structs import check_struct
from gateway.errors import GatewayError, backend_failed
from gateway.schemas import RequestKind
from gateway.upstream import UpstreamError
from plugins.openai_compat.errors import transport_error
from plugins.tgi.client import TGIClient
from plugins.tgi.errors import event_error
from plugins.tgi.length import Limits, chat_bytes_bound, may_be_too_long, too_long
from plugins.tgi.metrics import parse_load
from plugins.tgi.params import (
    CHAT_PARAMS,
    COMPLETION_PARAMS,
    chat_request,
    check_params,
    generate_request,
    prompt_text,
)
from plugins.tgi.responses import chat_body, completion_body
from plugins.tgi.stop_sequences import stop_list
from plugins.tgi.stream import TGIEventStream
from plugins.tgi.translate import ChatTranslator, CompletionTranslator
from plugins.tgi.wire import (
    TGIInfo,
    TGIToken,
    decode_chat,
    decode_chat_tokenize,
    decode_generate,
    decode_info,
    decode_tokenize,
)

log = logging.getLogger("gateway.plugins.tgi")


class TGIOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`options:` of a tgi backend."""

    adapter_id: str | None = None  # a LoRA adapter the server loaded (--lora-adapters) to ask for
    check_length: bool = True  # refuse over-long prompts before sending them
    # Override what /info says (or stand in for it when /info is unreachable at start-up).
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None


class TGIBackend:
    """A TGI server: Messages API for chat, /generate(_stream) for completions."""

    plugin: ClassVar[str] = "tgi"

    def __init__(self, config: BackendConfig, context: BackendContext) -> None:
        self.name = config.name
        self.config = config
        self.options = msgspec.convert(config.options, TGIOptions)
        self.client = TGIClient(config.name, config, context.upstream)
        self.info: TGIInfo | None = None
        self._can_tokenize: bool | None = None
        self.capabilities = Capabilities(chat=True, completion=True, embeddings=False, tokenize=True,
                                         assistant_prefill=True)

    @classmethod
    def validate_config(cls, config: BackendConfig) -> Iterable[tuple[str, str]]:
        if config.url is None:
            yield ("url", "required key is missing")
        problems = check_struct(config.options, TGIOptions, "options")
        yield from problems
        if not problems:
            options = msgspec.convert(config.options, TGIOptions)
            for key in ("max_input_tokens", "max_total_tokens"):
                value = getattr(options, key)
                if value is not None and value <= 0:
                    yield (f"options.{key}", "must be positive")
            if options.max_input_tokens and options.max_total_tokens \
                    and options.max_input_tokens >= options.max_total_tokens:
                yield ("options.max_input_tokens", "must be less than max_total_tokens")

    # -- parameters -------------------------------------------------------------------------

    def supported_params(self, kind: RequestKind) -> frozenset[str]:
        if kind == "chat":
            return CHAT_PARAMS
        if kind == "completion":
            return COMPLETION_PARAMS
        return frozenset()

    def check_params(self, kind: RequestKind, body: dict[str, Any]) -> None:
        check_params(kind, body, self.name)

    # -- server facts -----------------------------------------------------------------------

    @property
    def limits(self) -> Limits | None:
        """The lengths TGI enforces: the config's overrides, else `/info`'s; None when unknown."""
        info = self.info
        max_input = self.options.max_input_tokens or (info.input_limit if info else None)
        max_total = self.options.max_total_tokens or (info.max_total_tokens if info else None)
        if max_input is None and max_total is None:
            return None
        return Limits(max_input_tokens=max_input, max_total_tokens=max_total)

    async def refresh_info(self) -> TGIInfo | None:
        """Read `/info` (model id and length limits) and whether `/tokenize` works."""
        try:
            status, body = await self.client.get("/info")
            if status == 200:
                self.info = decode_info(body)
        except (UpstreamError, msgspec.DecodeError, msgspec.ValidationError) as err:
            log.warning("backend %s: cannot read /info yet (%s); length checks wait for it", self.name, err)
            return None
        if self._can_tokenize is None:
            with contextlib.suppress(GatewayError):
                await self.count_tokens("a")  # learn now whether usage can be counted this way
        return self.info

    async def count_tokens(self, text: str) -> int | None:
        """Tokens in `text` by the server's own tokenizer (`POST /tokenize`); None if it cannot say."""
        if self._can_tokenize is False:
            return None
        response = await self.client.post_raw("/tokenize", {"inputs": text}, timeouts=self.client.probe_timeouts)
        if response.status == 404:  # "No fast tokenizer available": a server without a Rust tokenizer
            self._can_tokenize = False
            log.info("backend %s cannot tokenize: length checks are left to the server", self.name)
            return None
        if response.status != 200:
            return None
        self._can_tokenize = True
        try:
            return len(decode_tokenize(response.body))
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` (`POST /tokenize`), for callers that need the ids themselves."""
        body = await self.client.post("/tokenize", {"inputs": text}, "completion")
        return [token.id for token in decode_tokenize(body)]

    @property
    def _fingerprint(self) -> str | None:
        return self.info.fingerprint if self.info is not None else None

    # -- length -----------------------------------------------------------------------------

    async def _check_completion_length(self, body: dict[str, Any], prompt: str) -> int | None:
        """Raise the 400 for an over-long prompt; returns the exact count when it had to count."""
        limits = self.limits
        max_tokens = body.get("max_tokens")
        if limits is None or not self.options.check_length:
            return None
        truncate = body.get("truncate")
        size = len(prompt.encode())
        if isinstance(truncate, int) and truncate > 0:
            size = min(size, truncate)
        if not may_be_too_long(limits, size, max_tokens):
            return None
        count = await self.count_tokens(prompt)
        if count is None:
            return None
        if isinstance(truncate, int) and truncate > 0:
            count = min(count, truncate)  # TGI keeps the last `truncate` tokens
        error = too_long(self.name, limits, count, max_tokens, "completion")
        if error is not None:
            raise error
        return count

    async def _check_chat_length(self, payload: dict[str, Any]) -> None:
        limits = self.limits
        max_tokens = payload.get("max_tokens")
        if limits is None or not self.options.check_length or self._can_tokenize is False:
            return
        if not may_be_too_long(limits, chat_bytes_bound(payload.get("messages")), max_tokens):
            return
        response = await self.client.post_raw("/chat_tokenize", payload, timeouts=self.client.probe_timeouts)
        if response.status != 200:
            # No /chat_tokenize (TGI before 2.2), or a chat the template refuses: the generation
            # request will meet the server's own validation, mapped to the same errors.
            return
        try:
            count = len(decode_chat_tokenize(response.body).tokenize_response)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        error = too_long(self.name, limits, count, max_tokens, "chat")
        if error is not None:
            raise error

    # -- chat -------------------------------------------------------------------------------

    async def chat(self, body: dict[str, Any]) -> bytes:
        payload = chat_request(body, self.options.adapter_id)
        payload["stream"] = False
        await self._check_chat_length(payload)
        raw = await self.client.post("/v1/chat/completions", payload, "chat")
        try:
            tgi = decode_chat(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise backend_failed(self.name, f"answered 200 with an unusable chat body ({err})") from err
        return chat_body(tgi, model=self.config.model, stops=stop_list(body.get("stop")))

    async def stream_chat(self, body: dict[str, Any]) -> TGIEventStream:
        payload = chat_request(body, self.options.adapter_id)
        payload["stream"] = True
        await self._check_chat_length(payload)
        upstream = await self.client.open_stream("/v1/chat/completions", payload, "chat")
        translator = ChatTranslator(self.name, self.config.model, stop_list(body.get("stop")))
        return TGIEventStream(self.name, upstream, translator)

    # -- completions ------------------------------------------------------------------------

    async def completion(self, body: dict[str, Any]) -> bytes:
        prompt = prompt_text(body)
        count = await self._check_completion_length(body, prompt)
        best_of = body.get("best_of")
        if count is None and self._can_tokenize is False and best_of in (None, 1):
            # /generate does not say how long the prompt was; /generate_stream's last event does.
            return await self._completion_via_stream(body, prompt)
        counting: asyncio.Task[int | None] | None = None
        if count is None:
            counting = asyncio.ensure_future(self.count_tokens(prompt))  # concurrently: no added latency
        try:
            raw = await self.client.post("/generate", generate_request(body, self.options.adapter_id, stream=False),
                                         "completion")
        except BaseException:
            if counting is not None:
                counting.cancel()
            raise
        if counting is not None:
            try:
                count = await counting
            except Exception:  # usage is then reported without the prompt; the answer still stands
                count = None
        try:
            generated = decode_generate(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise backend_failed(self.name, f"answered 200 with an unusable /generate body ({err})") from err
        details = generated.details
        if details is None:
            raise backend_failed(self.name, "/generate answered without the details it was asked for")
        truncate = body.get("truncate")
        prompt_tokens = count or 0
        if isinstance(truncate, int) and truncate > 0:
            prompt_tokens = min(prompt_tokens, truncate)
        return completion_body(
            model=self.config.model, fingerprint=self._fingerprint, text=generated.generated_text,
            finish_reason=details.finish_reason,
            stops=stop_list(body.get("stop")), tokens=details.tokens, top_tokens=details.top_tokens,
            prompt_tokens=prompt_tokens, generated_tokens=details.generated_tokens,
            logprobs=body.get("logprobs"), echo_prompt=prompt if body.get("echo") else None,
        )

    async def _completion_via_stream(self, body: dict[str, Any], prompt: str) -> bytes:
        events = await self.client.drain_generate_stream(
            generate_request(body, self.options.adapter_id, stream=True))
        tokens: list[TGIToken] = []
        tops: list[list[TGIToken]] = []
        for event in events:
            if event.error is not None:
                raise event_error(self.name, event.error, event.error_type, "completion")
            if event.token is None:
                continue
            tokens.append(event.token)
            tops.append(event.top_tokens)
            if event.generated_text is not None and event.details is not None:
                return completion_body(
                    model=self.config.model, fingerprint=self._fingerprint, text=event.generated_text,
                    finish_reason=event.details.finish_reason,
                    stops=stop_list(body.get("stop")), tokens=tokens, top_tokens=tops,
                    prompt_tokens=event.details.input_length or 0, generated_tokens=event.details.generated_tokens,
                    logprobs=body.get("logprobs"), echo_prompt=prompt if body.get("echo") else None,
                )
        raise backend_failed(self.name, "stream ended before its last event (cut mid-stream)")

    async def stream_completion(self, body: dict[str, Any]) -> TGIEventStream:
        prompt = prompt_text(body)
        await self._check_completion_length(body, prompt)
        upstream = await self.client.open_stream(
            "/generate_stream", generate_request(body, self.options.adapter_id, stream=True), "completion")
        options = body.get("stream_options") or {}
        translator = CompletionTranslator(
            self.name, self.config.model, stop_list(body.get("stop")),
            include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
            logprobs=body.get("logprobs"), echo_prompt=prompt if body.get("echo") else None,
            fingerprint=self._fingerprint,
        )
        return TGIEventStream(self.name, upstream, translator)

    async def embeddings(self, body: dict[str, Any]) -> bytes:
        raise GatewayError(422, f"backend '{self.name}' (tgi) does not serve embeddings: TGI generates text only",
                           param="model", code="unsupported_endpoint")

    # -- TGI's own API, for callers that want more than OpenAI's -----------------------------

    async def generate(self, payload: dict[str, Any]) -> dict[str, Any]:
        """TGI's `/generate` as it is (details, top_n_tokens, decoder_input_details, grammar, seed)."""
        result: dict[str, Any] = msgspec.json.decode(await self.client.post("/generate", payload, "completion"))
        return result

    # -- control plane ----------------------------------------------------------------------

    async def start(self) -> None:
        """Read `/info` once; a server still loading is not an error (health will retry)."""
        await self.refresh_info()
        if self.info is not None:
            log.info("backend %s: TGI %s serving %s (max_input_tokens=%s, max_total_tokens=%s)", self.name,
                     self.info.version, self.info.model_id, self.info.input_limit, self.info.max_total_tokens)

    async def health(self) -> bool:
        try:
            status, _ = await self.client.get("/health")
        except UpstreamError:
            return False
        if status == 200 and self.info is None:
            await self.refresh_info()
        return status == 200

    async def load(self) -> BackendLoad:
        """Queue size and running batch size from TGI's Prometheus metrics; capacity from `/info`.

        Capacity is `max_batch_size` where the server reports it (TGI 1.x), else
        `max_concurrent_requests`: how many requests TGI takes before it answers 429.
        """
        try:
            status, body = await self.client.get("/metrics")
        except UpstreamError as err:
            raise transport_error(self.name, err) from err
        load = parse_load(body.decode("utf-8", "replace")) if status == 200 else BackendLoad()
        if self.info is not None:
            capacity = self.info.max_batch_size or self.info.max_concurrent_requests
            load.capacity = float(capacity) if capacity else None
        return load

    async def aclose(self) -> None:
        """Nothing to release: the shared upstream client is closed by the gateway."""
