"""`mode: triton`: Triton Inference Server with the TensorRT-LLM backend, through its generate extension."""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import msgspec

from gateway.backend import BackendContext, BackendLoad, BackendUnavailable, Capabilities
from gateway.config import BackendConfig
from gateway.errors import GatewayError
from gateway.schemas import RequestKind
from gateway.upstream import UpstreamError, UpstreamTimeouts
from plugins.openai_compat.errors import refusal_body, transport_error
from plugins.tensorrt_llm.options import TritonOptions
from plugins.tensorrt_llm.triton_errors import triton_http_error
from plugins.tensorrt_llm.triton_metrics import parse_load
from plugins.tensorrt_llm.triton_request import SUPPORTED, TritonCall, build_call, check_request
from plugins.tensorrt_llm.triton_response import whole_reply
from plugins.tensorrt_llm.triton_stream import ChunkWriter, TritonEventStream

_encode = msgspec.json.Encoder().encode
_JSON = {"content-type": "application/json"}


def _metrics_url(root: str) -> str:
    """Triton's metrics port (--metrics-port, default 8002) on the same host."""
    parts = urlsplit(root)
    return f"{parts.scheme}://{parts.hostname}:8002/metrics"


class TritonBackend:
    """Triton + TensorRT-LLM: OpenAI chat and completions mapped onto `generate` / `generate_stream`."""

    plugin: ClassVar[str] = "tensorrt_llm"

    def __init__(self, config: BackendConfig, context: BackendContext) -> None:
        self.name = config.name
        self.config = config
        self.options = msgspec.convert(config.options, TritonOptions)
        self._upstream = context.upstream
        self.root = (config.url or "http://127.0.0.1:0").rstrip("/")
        model = f"{self.root}/v2/models/{quote(self.options.model_name, safe='')}"
        if self.options.model_version:
            model += f"/versions/{quote(self.options.model_version, safe='')}"
        self._generate_url = model + "/generate"
        self._stream_url = model + "/generate_stream"
        self._ready_url = model + "/ready"
        self._metrics_url = self.options.metrics_url or _metrics_url(self.root)
        self._headers = dict(_JSON)
        if config.api_key:
            self._headers["authorization"] = f"Bearer {config.api_key}"
        t = config.timeouts
        self._timeouts = UpstreamTimeouts(connect_s=t.connect_s, first_byte_s=t.first_token_s, total_s=t.total_s)
        self._probe_timeouts = UpstreamTimeouts(connect_s=min(t.connect_s, 2.0), first_byte_s=5.0, total_s=5.0)
        self.capabilities = Capabilities(embeddings=False)

    # -- parameters -------------------------------------------------------------------------

    def supported_params(self, kind: RequestKind) -> frozenset[str]:
        return SUPPORTED[kind]

    def check_params(self, kind: RequestKind, body: dict[str, Any]) -> None:
        check_request(kind, body, self.name, self.plugin)

    # -- requests ---------------------------------------------------------------------------

    async def _generate(self, kind: RequestKind, body: dict[str, Any]) -> bytes:
        call = build_call(kind, body, self.options, stream=False)
        try:
            response = await self._upstream.request(
                "POST", self._generate_url, body=_encode(call.body), headers=self._headers, timeouts=self._timeouts
            )
        except UpstreamError as err:
            raise transport_error(self.name, err) from err
        if response.status != 200:
            raise triton_http_error(self.name, self.options.model_name, response.status, response.body,
                                    response.retry_after)
        return whole_reply(self.name, kind, call, self.config.model, response.body)

    async def _open(self, kind: RequestKind, body: dict[str, Any]) -> TritonEventStream:
        call: TritonCall = build_call(kind, body, self.options, stream=True)
        options = body.get("stream_options") or {}
        writer = ChunkWriter(kind, call, self.config.model, bool(options.get("include_usage")))
        try:
            upstream = await self._upstream.open_stream(
                "POST", self._stream_url, body=_encode(call.body), headers=self._headers, timeouts=self._timeouts
            )
        except UpstreamError as err:
            raise transport_error(self.name, err) from err
        if upstream.status != 200:
            raise triton_http_error(self.name, self.options.model_name, upstream.status,
                                    await refusal_body(upstream), upstream.retry_after)
        return TritonEventStream(self.name, upstream, writer)

    async def chat(self, body: dict[str, Any]) -> bytes:
        return await self._generate("chat", body)

    async def stream_chat(self, body: dict[str, Any]) -> TritonEventStream:
        return await self._open("chat", body)

    async def completion(self, body: dict[str, Any]) -> bytes:
        return await self._generate("completion", body)

    async def stream_completion(self, body: dict[str, Any]) -> TritonEventStream:
        return await self._open("completion", body)

    async def embeddings(self, body: dict[str, Any]) -> bytes:
        raise GatewayError(
            422,
            f"backend '{self.name}' (Triton TensorRT-LLM) does not serve embeddings",
            param="model",
            code="unsupported_endpoint",
        )

    # -- control plane ----------------------------------------------------------------------

    async def health(self) -> bool:
        """Ready when Triton says this model is ready (`GET /v2/models/{model}/ready` answers 200)."""
        try:
            response = await self._upstream.request("GET", self._ready_url, timeouts=self._probe_timeouts)
        except UpstreamError:
            return False
        return response.status == 200

    async def load(self) -> BackendLoad:
        """Running, queued, KV-cache use and capacity from Triton's Prometheus metrics."""
        try:
            response = await self._upstream.request("GET", self._metrics_url, timeouts=self._probe_timeouts)
        except UpstreamError as err:
            raise BackendUnavailable(self.name, f"metrics: {err}") from err
        if response.status != 200:
            return BackendLoad()
        return parse_load(response.body.decode("utf-8", "replace"), self.options.trtllm_model_label)

    async def start(self) -> None:
        """Nothing to start: connections are opened lazily by the shared upstream client."""

    async def aclose(self) -> None:
        """Nothing to release: the shared upstream client is closed by the gateway."""
