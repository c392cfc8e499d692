"""`OpenAICompatBackend`: forwards OpenAI requests to a server that speaks them natively."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import msgspec

from gateway.backend import BackendContext, BackendLoad, Capabilities
from gateway.config import BackendConfig
from gateway.config_structs import check_struct
from gateway.errors import GatewayError, backend_failed
from gateway.schemas import (
    OPENAI_CHAT_PARAMS,
    OPENAI_COMPLETION_PARAMS,
    OPENAI_EMBEDDING_PARAMS,
    RequestKind,
)
from gateway.upstream import UpstreamError, UpstreamTimeouts
from plugins.openai_compat.errors import http_error, refusal_body, transport_error
from plugins.openai_compat.stream import OpenAIEventStream

_encode = msgspec.json.Encoder().encode


class _AnyObject(msgspec.Struct):
    """Decoding into a field-less Struct checks a body is one well-formed JSON object, cheaply."""


_decode_object = msgspec.json.Decoder(_AnyObject).decode


class OpenAICompatOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`options:` of an openai_compat backend."""

    # Non-OpenAI parameters the server is known to honour (e.g. vLLM's top_k, min_p).
    extra_params: list[str] = msgspec.field(default_factory=list)
    health_path: str = "/health"
    embeddings: bool = False


def _api_base(url: str) -> tuple[str, str]:
    """(server root, OpenAI API base) from a configured URL with or without `/v1`."""
    url = url.rstrip("/")
    if url.endswith("/v1"):
        return url[: -len("/v1")], url
    return url, url + "/v1"


class OpenAICompatBackend:
    """Any OpenAI-compatible server: requests and SSE bytes pass through unchanged."""

    plugin: ClassVar[str] = "openai_compat"
    options_type: ClassVar[type[OpenAICompatOptions]] = OpenAICompatOptions
    # Parameters beyond OpenAI's own that this server type always honours.
    native_params: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: BackendConfig, context: BackendContext) -> None:
        self.name = config.name
        self.config = config
        self.options = msgspec.convert(config.options, self.options_type)
        self._upstream = context.upstream
        self._headers = {"content-type": "application/json"}
        if config.api_key:
            self._headers["authorization"] = f"Bearer {config.api_key}"
        self._set_url(config.url or "http://127.0.0.1:0")
        t = config.timeouts
        self._timeouts = UpstreamTimeouts(connect_s=t.connect_s, first_byte_s=t.first_token_s, total_s=t.total_s)
        self._probe_timeouts = UpstreamTimeouts(
            connect_s=min(t.connect_s, 2.0), first_byte_s=5.0, total_s=5.0
        )
        extras = self.native_params | frozenset(self.options.extra_params)
        self._params: dict[str, frozenset[str]] = {
            "chat": OPENAI_CHAT_PARAMS | extras,
            "completion": OPENAI_COMPLETION_PARAMS | extras,
            "embedding": OPENAI_EMBEDDING_PARAMS,
        }
        self.capabilities = Capabilities(embeddings=self.options.embeddings)

    def _set_url(self, url: str) -> None:
        self.root, self.api_base = _api_base(url)
        self._chat_url = self.api_base + "/chat/completions"
        self._completion_url = self.api_base + "/completions"
        self._embeddings_url = self.api_base + "/embeddings"

    @classmethod
    def validate_config(cls, config: BackendConfig) -> Iterable[tuple[str, str]]:
        if config.url is None:
            yield ("url", "required key is missing")
        yield from check_struct(config.options, cls.options_type, "options")

    # -- parameters -------------------------------------------------------------------------

    def supported_params(self, kind: RequestKind) -> frozenset[str]:
        return self._params[kind]

    def check_params(self, kind: RequestKind, body: dict[str, Any]) -> None:
        """OpenAI-compatible servers take whatever OpenAI takes; subclasses narrow this."""

    # -- requests ---------------------------------------------------------------------------

    def _encode_body(self, body: dict[str, Any]) -> bytes:
        body["model"] = self.config.model
        return _encode(body)

    async def _post(self, url: str, body: dict[str, Any]) -> bytes:
        try:
            response = await self._upstream.request(
                "POST", url, body=self._encode_body(body), headers=self._headers, timeouts=self._timeouts
            )
        except UpstreamError as err:
            raise transport_error(self.name, err) from err
        if response.status != 200:
            raise http_error(self.name, response.status, response.body, response.retry_after)
        try:
            _decode_object(response.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise backend_failed(self.name, f"answered 200 with a body that is not a JSON object ({err})") from err
        return response.body

    async def _open_stream(self, url: str, body: dict[str, Any]) -> OpenAIEventStream:
        try:
            upstream = await self._upstream.open_stream(
                "POST", url, body=self._encode_body(body), headers=self._headers, timeouts=self._timeouts
            )
        except UpstreamError as err:
            raise transport_error(self.name, err) from err
        if upstream.status != 200:
            raise http_error(self.name, upstream.status, await refusal_body(upstream), upstream.retry_after)
        return OpenAIEventStream(self.name, upstream)

    async def chat(self, body: dict[str, Any]) -> bytes:
        return await self._post(self._chat_url, body)

    async def stream_chat(self, body: dict[str, Any]) -> OpenAIEventStream:
        return await self._open_stream(self._chat_url, body)

    async def completion(self, body: dict[str, Any]) -> bytes:
        return await self._post(self._completion_url, body)

    async def stream_completion(self, body: dict[str, Any]) -> OpenAIEventStream:
        return await self._open_stream(self._completion_url, body)

    async def embeddings(self, body: dict[str, Any]) -> bytes:
        if not self.capabilities.embeddings:
            raise GatewayError(
                422,
                f"backend '{self.name}' does not serve embeddings",
                param="model",
                code="unsupported_endpoint",
            )
        return await self._post(self._embeddings_url, body)

    async def _native(self, path: str, payload: dict[str, Any]) -> bytes:
        """POST to a route on the server root (not under /v1): the body of a 200 answer."""
        try:
            response = await self._upstream.request(
                "POST", self.root + path, body=_encode(payload), headers=self._headers, timeouts=self._timeouts
            )
        except UpstreamError as err:
            raise transport_error(self.name, err) from err
        if response.status != 200:
            raise http_error(self.name, response.status, response.body, response.retry_after)
        return response.body

    # -- control plane ----------------------------------------------------------------------

    async def get(self, path: str) -> tuple[int, bytes]:
        """A control-plane GET on the server root (health, metrics, slots)."""
        response = await self._upstream.request("GET", self.root + path, timeouts=self._probe_timeouts)
        return response.status, response.body

    async def health(self) -> bool:
        try:
            status, _ = await self.get(self.options.health_path)
        except UpstreamError:
            return False
        return status == 200

    async def load(self) -> BackendLoad:
        return BackendLoad()

    async def start(self) -> None:
        """Nothing to start: connections are opened lazily by the shared upstream client."""

    async def aclose(self) -> None:
        """Nothing to release: the shared upstream client is closed by the gateway."""
