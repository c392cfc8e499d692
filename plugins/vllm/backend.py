"""`VLLMBackend`: vLLM's OpenAI routes plus its native tokenizer, model list and metrics."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import msgspec

from gateway.backend import BackendContext, BackendLoad, BackendUnavailable, Capabilities
from gateway.config import BackendConfig
from gateway.config_structs import check_struct
from gateway.errors import GatewayError, backend_failed, unsupported_parameter
from gateway.schemas import OPENAI_CHAT_PARAMS, OPENAI_COMPLETION_PARAMS, RequestKind
from gateway.upstream import UpstreamError
from plugins.openai_compat.backend import OpenAICompatBackend, OpenAICompatOptions
from plugins.openai_compat.errors import http_error, transport_error
from plugins.openai_compat.stream import OpenAIEventStream
from plugins.vllm.errors import refine_error
from plugins.vllm.metrics import parse_load
from plugins.vllm.params import CHAT_PARAMS, COMPLETION_PARAMS, translate_legacy_guided


class VLLMOptions(OpenAICompatOptions, forbid_unknown_fields=True, kw_only=True):
    """`options:` of a vllm backend (`embeddings: true` only for a server running an embedding model)."""

    metrics_path: str = "/metrics"


# Native answers (vllm/entrypoints/serve/tokenize/protocol.py; models/protocol.py), decoded
# with msgspec into just the fields the gateway reads.
class _Tokenized(msgspec.Struct):
    tokens: list[int]


class _Detokenized(msgspec.Struct):
    prompt: str


class ServedModel(msgspec.Struct, kw_only=True):
    """One entry of vLLM's `GET /v1/models`: the served name and its context length."""

    id: str
    max_model_len: int | None = None
    root: str | None = None


class _ModelList(msgspec.Struct):
    data: list[ServedModel]


_decode_tokenized = msgspec.json.Decoder(_Tokenized).decode
_decode_detokenized = msgspec.json.Decoder(_Detokenized).decode
_decode_models = msgspec.json.Decoder(_ModelList).decode


class VLLMBackend(OpenAICompatBackend):
    """A vLLM server: OpenAI routes for traffic with vLLM's extra parameters, native routes for tokens and load."""

    plugin: ClassVar[str] = "vllm"
    options_type: ClassVar[type[OpenAICompatOptions]] = VLLMOptions

    def __init__(self, config: BackendConfig, context: BackendContext) -> None:
        super().__init__(config, context)
        self.options: VLLMOptions
        extras = frozenset(self.options.extra_params)
        # Per endpoint, unlike the base class: vLLM's chat and completion requests differ.
        self._params["chat"] = OPENAI_CHAT_PARAMS | CHAT_PARAMS | extras
        self._params["completion"] = OPENAI_COMPLETION_PARAMS | COMPLETION_PARAMS | extras
        self.capabilities = Capabilities(
            embeddings=self.options.embeddings, token_id_prompts=True, tokenize=True, prompt_logprobs=True,
            assistant_prefill=True,
        )

    @classmethod
    def validate_config(cls, config: BackendConfig) -> Iterable[tuple[str, str]]:
        if config.url is None:
            yield ("url", "required key is missing")
        if config.launch is not None:
            yield ("launch", "the vllm plugin does not launch servers; start vLLM yourself and give its `url`")
        yield from check_struct(config.options, cls.options_type, "options")

    # -- parameters -------------------------------------------------------------------------

    def check_params(self, kind: RequestKind, body: dict[str, Any]) -> None:
        # vLLM 0.32's CompletionRequest has no best_of field any more, so the server ignores
        # it (checked on the real server): refuse a value that would need it.
        if kind == "completion":
            best_of = body.get("best_of")
            if best_of is not None and (isinstance(best_of, bool) or best_of != 1):
                raise unsupported_parameter("best_of", self.name, self.plugin)

    def _encode_body(self, body: dict[str, Any]) -> bytes:
        return super()._encode_body(translate_legacy_guided(body))

    # -- requests: vLLM's error bodies put into OpenAI's conventions -------------------------

    async def chat(self, body: dict[str, Any]) -> bytes:
        try:
            return await super().chat(body)
        except GatewayError as err:
            refine_error(err, "chat")
            raise

    async def stream_chat(self, body: dict[str, Any]) -> OpenAIEventStream:
        try:
            return await super().stream_chat(body)
        except GatewayError as err:
            refine_error(err, "chat")
            raise

    async def completion(self, body: dict[str, Any]) -> bytes:
        try:
            return await super().completion(body)
        except GatewayError as err:
            refine_error(err, "completion")
            raise

    async def stream_completion(self, body: dict[str, Any]) -> OpenAIEventStream:
        try:
            return await super().stream_completion(body)
        except GatewayError as err:
            refine_error(err, "completion")
            raise

    async def embeddings(self, body: dict[str, Any]) -> bytes:
        try:
            return await super().embeddings(body)
        except GatewayError as err:
            refine_error(err, "embedding")
            raise

    # -- native API -------------------------------------------------------------------------

    async def _native(self, path: str, payload: dict[str, Any]) -> bytes:
        try:
            return await super()._native(path, payload)
        except GatewayError as err:
            refine_error(err, None)
            raise

    def _decode(self, decode: Any, body: bytes, what: str) -> Any:
        try:
            return decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise backend_failed(self.name, f"unreadable {what} answer ({err})") from err

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of `text` in the served model's vocabulary (`POST /tokenize`)."""
        # vLLM adds special tokens unless told not to (TokenizeCompletionRequest); the default
        # here matches the llamacpp plugin so callers get the same ids from either.
        payload = {"model": self.config.model, "prompt": text, "add_special_tokens": add_special}
        result: _Tokenized = self._decode(_decode_tokenized, await self._native("/tokenize", payload), "/tokenize")
        return result.tokens

    async def detokenize(self, tokens: list[int]) -> str:
        """Text of token ids (`POST /detokenize`)."""
        payload = {"model": self.config.model, "tokens": tokens}
        body = await self._native("/detokenize", payload)
        result: _Detokenized = self._decode(_decode_detokenized, body, "/detokenize")
        return result.prompt

    async def models(self) -> list[ServedModel]:
        """The models this server serves (`GET /v1/models`), with their context lengths."""
        try:
            status, body = await self.get("/v1/models")
        except UpstreamError as err:
            raise transport_error(self.name, err) from err
        if status != 200:
            raise refine_error(http_error(self.name, status, body), None)
        result: _ModelList = self._decode(_decode_models, body, "/v1/models")
        return result.data

    async def load(self) -> BackendLoad:
        """Running and waiting requests and KV-cache use from vLLM's Prometheus page."""
        try:
            status, body = await self.get(self.options.metrics_path)
        except UpstreamError as err:
            raise BackendUnavailable(self.name, str(err)) from err
        if status != 200:
            return BackendLoad()
        return parse_load(body.decode("utf-8", "replace"))
