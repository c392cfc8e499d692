"""`OllamaBackend`: OpenAI requests served through Ollama's native API.

Traffic goes through the gateway's shared aiohttp upstream (`context.upstream`), as for
every plugin: the official `ollama` client (httpx inside) measured several times the CPU
per request (benchmarks/ollama_client.py) and would bring its own pool. The few
control-plane calls (`/api/version`, `/api/tags`, `/api/ps`) use the same pooled client with
short probe limits, so one transport carries one set of timeouts and error mappings; the
`ollama` client is the conformance client of the tests instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar

import msgspec

from gateway.backend import BackendContext, BackendUnavailable, Capabilities
from gateway.config import BackendConfig
from gateway.errors import GatewayError, backend_failed
from gateway.schemas import RequestKind
from gateway.upstream import UpstreamError, UpstreamTimeouts
from plugins.ollama import config as ollama_config
from plugins.ollama import params, responses
from plugins.ollama.config import OllamaOptions
from plugins.ollama.errors import http_error
from plugins.ollama.load import OllamaLoad, parse_ps
from plugins.ollama.stream import OllamaEventStream, make_translator
from plugins.ollama.translate import RequestBuilder
from plugins.ollama.wire import ChatAnswer, EmbedAnswer, GenerateAnswer, PulledModels, Version, canonical_model
from plugins.openai_compat.errors import transport_error

log = logging.getLogger("gateway.plugins.ollama")

_decode_chat = msgspec.json.Decoder(ChatAnswer).decode
_decode_generate = msgspec.json.Decoder(GenerateAnswer).decode
_decode_embed = msgspec.json.Decoder(EmbedAnswer).decode
_decode_version = msgspec.json.Decoder(Version).decode
_decode_tags = msgspec.json.Decoder(PulledModels).decode


def _server_root(url: str) -> str:
    """The server root from a configured URL, tolerating a pasted `/api` or `/v1` suffix."""
    url = url.rstrip("/")
    for suffix in ("/api", "/v1"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


class OllamaBackend:
    """One Ollama server and one of its models."""

    plugin: ClassVar[str] = "ollama"

    def __init__(self, config: BackendConfig, context: BackendContext) -> None:
        self.name = config.name
        self.config = config
        self.options = msgspec.convert(config.options, OllamaOptions, strict=False)
        self.root = _server_root(config.url or "http://127.0.0.1:11434")
        self._upstream = context.upstream
        self._headers = {"content-type": "application/json"}
        if config.api_key:
            self._headers["authorization"] = f"Bearer {config.api_key}"
        t = config.timeouts
        self._timeouts = UpstreamTimeouts(connect_s=t.connect_s, first_byte_s=t.first_token_s, total_s=t.total_s)
        self._probe_timeouts = UpstreamTimeouts(connect_s=min(t.connect_s, 2.0), first_byte_s=5.0, total_s=5.0)
        self._requests = RequestBuilder(config.model, self.options)
        self.capabilities = Capabilities(embeddings=self.options.embeddings, assistant_prefill=True)
        self.server_version: str | None = None
        self.in_flight = 0  # requests open with the server now: Ollama's own API does not say

    @classmethod
    def validate_config(cls, config: BackendConfig) -> Iterable[tuple[str, str]]:
        return list(ollama_config.validate(config))

    # -- parameters -------------------------------------------------------------------------

    def supported_params(self, kind: RequestKind) -> frozenset[str]:
        return params.PARAMS[kind]

    def check_params(self, kind: RequestKind, body: dict[str, Any]) -> None:
        params.check(kind, body, self.name, self.plugin)

    # -- data path --------------------------------------------------------------------------

    async def _post(self, path: str, payload: bytes) -> bytes:
        self.in_flight += 1
        try:
            response = await self._upstream.request("POST", self.root + path, body=payload, headers=self._headers,
                                                    timeouts=self._timeouts)
        except UpstreamError as err:
            raise transport_error(self.name, err) from err
        finally:
            self.in_flight -= 1
        if response.status != 200:
            raise http_error(self.name, self.config.model, response.status, response.body, path, response.retry_after)
        return response.body

    def _unusable(self, path: str, err: Exception) -> GatewayError:
        return backend_failed(self.name, f"{path} answered 200 with a body that is not Ollama's answer ({err})")

    async def _open(self, kind: str, path: str, payload: bytes, body: dict[str, Any]) -> OllamaEventStream:
        self.in_flight += 1
        try:
            upstream = await self._upstream.open_stream("POST", self.root + path, body=payload,
                                                        headers=self._headers, timeouts=self._timeouts)
        except UpstreamError as err:
            self.in_flight -= 1
            raise transport_error(self.name, err) from err
        if upstream.status != 200:
            self.in_flight -= 1
            try:
                error_body = await upstream.read()
            except UpstreamError:
                error_body = b""
            finally:
                await upstream.aclose()
            raise http_error(self.name, self.config.model, upstream.status, error_body, path, upstream.retry_after)
        return OllamaEventStream(upstream, make_translator(kind, self.name, body), on_close=self._stream_closed)

    def _stream_closed(self) -> None:
        self.in_flight -= 1

    async def chat(self, body: dict[str, Any]) -> bytes:
        raw = await self._post("/api/chat", self._requests.chat(body, stream=False))
        try:
            answer = _decode_chat(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as err:
            raise self._unusable("/api/chat", err) from err
        if answer.error is not None:
            raise backend_failed(self.name, answer.error)
        return responses.chat_completion(answer)

    async def stream_chat(self, body: dict[str, Any]) -> OllamaEventStream:
        return await self._open("chat", "/api/chat", self._requests.chat(body, stream=True), body)

    async def completion(self, body: dict[str, Any]) -> bytes:
        raw = await self._post("/api/generate", self._requests.generate(body, stream=False))
        try:
            answer = _decode_generate(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as err:
            raise self._unusable("/api/generate", err) from err
        if answer.error is not None:
            raise backend_failed(self.name, answer.error)
        return responses.text_completion(answer)

    async def stream_completion(self, body: dict[str, Any]) -> OllamaEventStream:
        return await self._open("completion", "/api/generate", self._requests.generate(body, stream=True), body)

    async def embeddings(self, body: dict[str, Any]) -> bytes:
        if not self.capabilities.embeddings:
            raise GatewayError(422, f"backend '{self.name}' does not serve embeddings (options.embeddings is false)",
                               param="model", code="unsupported_endpoint")
        raw = await self._post("/api/embed", self._requests.embed(body))
        try:
            answer = _decode_embed(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as err:
            raise self._unusable("/api/embed", err) from err
        return responses.embedding_list(answer, body.get("encoding_format"))

    # -- control plane ----------------------------------------------------------------------

    async def _get(self, path: str) -> bytes:
        response = await self._upstream.request("GET", self.root + path, headers=self._headers,
                                                timeouts=self._probe_timeouts)
        if response.status != 200:
            raise http_error(self.name, self.config.model, response.status, response.body, path, response.retry_after)
        return response.body

    async def version(self) -> str:
        """The server's version (`GET /api/version`)."""
        self.server_version = _decode_version(await self._get("/api/version")).version
        return self.server_version

    async def pulled_models(self) -> list[str]:
        """Models the server has pulled (`GET /api/tags`)."""
        return [m.model or m.name for m in _decode_tags(await self._get("/api/tags")).models]

    async def health(self) -> bool:
        """The server answers `/api/version` (cheap, and proves it is an Ollama, not any HTTP server)."""
        try:
            await self.version()
        except (UpstreamError, GatewayError, msgspec.DecodeError, msgspec.ValidationError):
            return False
        return True

    async def load(self) -> OllamaLoad:
        """What `/api/ps` says about this backend's model, plus the requests open with it (see load.py)."""
        try:
            body = await self._get("/api/ps")
        except UpstreamError as err:
            raise BackendUnavailable(self.name, str(err)) from err
        try:
            return parse_ps(body, self.config.model, self.in_flight, self.options.num_parallel)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as err:
            raise self._unusable("/api/ps", err) from err

    async def start(self) -> None:
        """Warn early about a model the server has not pulled; never fail start-up over it."""
        try:
            pulled = {canonical_model(m) for m in await self.pulled_models()}
        except (UpstreamError, GatewayError, msgspec.DecodeError, msgspec.ValidationError) as err:
            log.warning("backend %s: could not list the models of %s yet: %s", self.name, self.root, err)
            return
        if canonical_model(self.config.model) not in pulled:
            log.warning("backend %s: model %r is not pulled on %s; requests will get 404 until "
                        "`ollama pull %s` is run there", self.name, self.config.model, self.root, self.config.model)

    async def aclose(self) -> None:
        """Nothing to release: the shared upstream client is closed by the gateway."""
