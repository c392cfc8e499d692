"""The plugin's HTTP calls to one TGI server, all through the gateway's pooled upstream client."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.config import BackendConfig
from gateway.errors import GatewayError
from gateway.sse import SSEFramer
from gateway.upstream import UpstreamClient, UpstreamError, UpstreamResponse, UpstreamStream, UpstreamTimeouts
from plugins.openai_compat.errors import refusal_body, transport_error
from plugins.tgi.errors import http_error
from plugins.tgi.wire import TGIStreamEvent, decode_stream_event

_encode = msgspec.json.Encoder().encode


def server_root(url: str) -> str:
    """The server root from a configured URL, with or without an OpenAI-style `/v1`."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class TGIClient:
    """POSTs and GETs to one TGI server, mapping every failure to a `GatewayError`."""

    def __init__(self, name: str, config: BackendConfig, upstream: UpstreamClient) -> None:
        self.name = name
        self.root = server_root(config.url or "http://127.0.0.1:0")
        self._upstream = upstream
        self._headers = {"content-type": "application/json"}
        if config.api_key:  # Inference Endpoints and proxies in front of TGI take a bearer token
            self._headers["authorization"] = f"Bearer {config.api_key}"
        t = config.timeouts
        self.timeouts = UpstreamTimeouts(connect_s=t.connect_s, first_byte_s=t.first_token_s, total_s=t.total_s)
        self.probe_timeouts = UpstreamTimeouts(connect_s=min(t.connect_s, 2.0), first_byte_s=5.0, total_s=5.0)

    async def post_raw(self, path: str, payload: dict[str, Any], *,
                       timeouts: UpstreamTimeouts | None = None) -> UpstreamResponse:
        """POST JSON; any answer as it is, transport failures as a `GatewayError`."""
        try:
            return await self._upstream.request(
                "POST", self.root + path, body=_encode(payload), headers=self._headers,
                timeouts=timeouts or self.timeouts,
            )
        except UpstreamError as err:
            raise transport_error(self.name, err) from err

    async def post(self, path: str, payload: dict[str, Any], kind: str) -> bytes:
        """POST JSON; the 200 body, or the TGI error as a `GatewayError`."""
        response = await self.post_raw(path, payload)
        if response.status != 200:
            raise http_error(self.name, response.status, response.body, kind, response.retry_after)
        return response.body

    async def open_stream(self, path: str, payload: dict[str, Any], kind: str) -> UpstreamStream:
        """POST for an SSE answer; returns once TGI has answered 200."""
        try:
            upstream = await self._upstream.open_stream(
                "POST", self.root + path, body=_encode(payload), headers=self._headers, timeouts=self.timeouts
            )
        except UpstreamError as err:
            raise transport_error(self.name, err) from err
        if upstream.status != 200:
            raise http_error(self.name, upstream.status, await refusal_body(upstream), kind, upstream.retry_after)
        return upstream

    async def get(self, path: str) -> tuple[int, bytes]:
        """A control-plane GET (`/health`, `/info`, `/metrics`); raises `UpstreamError`."""
        response = await self._upstream.request("GET", self.root + path, timeouts=self.probe_timeouts)
        return response.status, response.body

    async def drain_generate_stream(self, payload: dict[str, Any]) -> list[TGIStreamEvent]:
        """Every event of one `/generate_stream` call (for non-streaming use of the stream)."""
        upstream = await self.open_stream("/generate_stream", payload, "completion")
        framer = SSEFramer()
        events: list[TGIStreamEvent] = []
        try:
            async for data in upstream.chunks():
                for event in framer.feed(data).split(b"\n\n")[:-1]:
                    for line in event.split(b"\n"):
                        if line.startswith(b"data:"):
                            events.append(decode_stream_event(line[5:].lstrip(b" ")))
        except UpstreamError as err:
            raise transport_error(self.name, err) from err
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise GatewayError(502, f"backend '{self.name}' failed: malformed stream event ({err})",
                               type="api_error", code="backend_error") from err
        finally:
            await upstream.aclose()
        return events
