"""OpenTelemetry traces, an optional extra (`pip install '.[otel]'`): one span per request, one per attempt.

With `tracing.enabled`, each OpenAI request gets a SERVER span named after the GenAI conventions,
`{gen_ai.operation.name} {gen_ai.request.model}` (`chat llama-3-8b`), carrying the request's
gen_ai.* attributes (operation, models, provider, token usage), its status and error.type, and
the gateway's own (request id, route, backend, cache result, tenant, key name, cost, TTFT). Each
try of a backend is a CLIENT span under it, `{operation} {backend's model}`, with the backend's
name, plugin and address, the attempt's number and whether it was the first try, a retry of the
same backend or a fallback to another; a failed attempt is marked ERROR with its error.type. A
stream's attempt span ends at the backend's first token (that is when the dispatcher has chosen);
the request span runs to the stream's last byte.

A caller's W3C `traceparent` (and `tracestate`) continues its trace, and the sampling decision in
it is followed (parent-based sampling; `sample_ratio` applies to traces that start here). While an
attempt runs, the upstream client adds the attempt span's `traceparent` to the request it sends, so
a backend that traces (vLLM does) joins the same trace.

Off, it costs nothing: the gateway holds `None` instead of a tracer and checks for it, and
OpenTelemetry is not even imported. The SDK is imported only when a tracer is made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from gateway.api.request_record import RequestRecord
from gateway.backend import Backend, BackendUnavailable
from gateway.errors import GatewayError
from gateway.genai_metrics import OPERATIONS
from gateway.observability_settings import TracingConfig
from gateway.schemas import OPENAI_PATHS, RequestKind
from gateway.upstream import UpstreamClient, UpstreamResponse, UpstreamStream, UpstreamTimeouts

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

T = TypeVar("T")
_INCOMING = {b"traceparent": "traceparent", b"tracestate": "tracestate"}


def make_tracer(config: TracingConfig, exporter: SpanExporter | None = None) -> RequestTracer | None:
    """The tracer the config asks for, or None when tracing is off. `exporter` replaces the OTLP
    exporter (tests pass an in-memory one; spans are then exported as each ends)."""
    if not config.enabled:
        return None
    return RequestTracer(config, exporter)


def error_type(exc: BaseException) -> str:
    """A low-cardinality name for what ended an attempt: the vocabulary of
    gateway_backend_attempt_failures (throttled, refused), else the HTTP status, else the exception."""
    if isinstance(exc, BackendUnavailable):
        return "throttled" if exc.throttled else "refused" if exc.mark_down else str(exc.status)
    if isinstance(exc, GatewayError):
        return str(exc.status)
    return type(exc).__qualname__


class RequestTracer:
    """Starts the spans; built only when tracing is on (it imports the SDK)."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        from opentelemetry import context, trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        from opentelemetry.trace.status import Status, StatusCode

        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # Batched off the request path, on the SDK's own thread.
            self.provider.add_span_processor(BatchSpanProcessor(
                OTLPSpanExporter(endpoint=config.endpoint, headers=config.headers or None)))
        else:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("gateway")
        self._propagator = TraceContextTextMapPropagator()
        self._attach = context.attach
        self._detach = context.detach
        self._in_context = trace.set_span_in_context
        self._server = trace.SpanKind.SERVER
        self._client = trace.SpanKind.CLIENT
        self._error = lambda description: Status(StatusCode.ERROR, description)
        self._addresses: dict[str | None, tuple[str, int | None]] = {}

    # -- the request ----------------------------------------------------------------------------

    def start_request(self, headers: Iterable[tuple[bytes, bytes]], kind: RequestKind) -> RequestSpan:
        """The request's span, made current (the attempts' spans nest under it); a caller's
        traceparent makes it a child of the caller's span."""
        carrier = {_INCOMING[k]: v.decode("latin-1") for k, v in headers if k in _INCOMING}
        parent = self._propagator.extract(carrier) if carrier else None
        operation = OPERATIONS[kind]
        span = self._tracer.start_span(operation, context=parent, kind=self._server, attributes={
            "gen_ai.operation.name": operation, "http.request.method": "POST", "url.path": OPENAI_PATHS[kind],
        })
        token = self._attach(self._in_context(span, parent))
        return RequestSpan(self, span, token)

    def _finish_request(self, span: Span, token: object, record: RequestRecord,
                        backends: Mapping[str, Backend]) -> None:
        try:
            if record.model:
                span.update_name(f"{OPERATIONS[record.kind]} {record.model}")
            attributes: dict[str, Any] = {
                "gen_ai.request.model": record.model,
                "gen_ai.usage.input_tokens": record.input_tokens,
                "gen_ai.usage.output_tokens": record.output_tokens,
                "http.response.status_code": record.status,
                "gateway.request_id": record.request_id.decode("ascii", "replace"),
                "gateway.route": record.route,
                "gateway.backend": record.backend,
                "gateway.cache": record.cache,
                "gateway.stream": record.stream,
                "gateway.speculative": record.speculative,
                "gateway.tenant": record.tenant,
                "gateway.cost_usd": record.cost_usd,
            }
            if record.key_name is not None:
                attributes["gateway.key_name"] = record.key_name
            backend = backends.get(record.backend)
            if backend is not None:
                attributes["gen_ai.provider.name"] = backend.plugin
                attributes["gen_ai.response.model"] = backend.config.model
            ttft = record.ttft_s
            if ttft is not None:
                attributes["gateway.ttft_s"] = ttft
            if record.status >= 400:
                attributes["error.type"] = str(record.status)
            elif record.error:  # a stream cut after its first byte: 200 sent, then an error event
                attributes["error.type"] = record.error
            span.set_attributes(attributes)
            if record.status >= 500:  # a server span's 4xx is the caller's error, not the gateway's
                span.set_status(self._error(f"HTTP {record.status}"))
            elif record.status < 400 and record.error:
                span.set_status(self._error(f"stream ended by an error event: {record.error}"))
        finally:
            span.end()
            self._detach(token)  # type: ignore[arg-type]

    # -- the attempts -----------------------------------------------------------------------------

    async def attempt(self, call: Awaitable[T], backend: Backend, kind: RequestKind, number: int,
                      failures: Iterable[tuple[str, object]]) -> T:
        """Await one attempt (`call`, the dispatcher's try of `backend`) inside its span. `number`
        counts the request's attempts from 1; `failures` are the attempts that failed before it."""
        failed = [name for name, _ in failures]
        reason = "first" if not failed else "retry" if backend.name in failed else "fallback"
        operation = OPERATIONS[kind]
        config = backend.config
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": backend.plugin,
            "gen_ai.request.model": config.model,
            "gateway.backend": backend.name,
            "gateway.attempt": number,
            "gateway.attempt.reason": reason,
        }
        address, port = self._address(config.url)
        if address:
            attributes["server.address"] = address
            if port is not None:
                attributes["server.port"] = port
        span = self._tracer.start_span(f"{operation} {config.model}", kind=self._client, attributes=attributes)
        token = self._attach(self._in_context(span))
        try:
            return await call
        except asyncio.CancelledError:
            span.set_attribute("error.type", "cancelled")  # the client went away: not the backend's failure
            raise
        except BaseException as exc:
            span.set_attribute("error.type", error_type(exc))
            span.set_status(self._error(getattr(exc, "message", None) or str(exc) or type(exc).__name__))
            raise
        finally:
            self._detach(token)
            span.end()

    def _address(self, url: str | None) -> tuple[str, int | None]:
        found = self._addresses.get(url)
        if found is None:
            parts = urlsplit(url) if url else None
            found = (parts.hostname or "", parts.port) if parts is not None else ("", None)
            self._addresses[url] = found
        return found

    # -- propagation and shutdown -------------------------------------------------------------------

    def inject(self, headers: dict[str, str]) -> None:
        """Add the current span's traceparent to outgoing headers (nothing when no span is current)."""
        self._propagator.inject(headers)

    def propagating(self, upstream: UpstreamClient) -> UpstreamClient:
        """`upstream`, sending the current attempt's traceparent with each request."""
        if isinstance(upstream, PropagatingUpstream):
            return upstream
        return PropagatingUpstream(upstream, self)

    def shutdown(self) -> None:
        """Export what is buffered and stop (blocking: call it from a thread)."""
        self.provider.shutdown()


class RequestSpan:
    """One request's span, current until `finish`."""

    __slots__ = ("_span", "_token", "_tracer")

    def __init__(self, tracer: RequestTracer, span: Span, token: object) -> None:
        self._tracer = tracer
        self._span = span
        self._token = token

    def finish(self, record: RequestRecord, backends: Mapping[str, Backend]) -> None:
        """Describe the finished request on the span, end it and restore the context it replaced."""
        self._tracer._finish_request(self._span, self._token, record, backends)


_JSON_HEADERS = {"content-type": "application/json"}  # what the transports send when given no headers


class PropagatingUpstream:
    """An `UpstreamClient` that adds W3C trace context to each request sent inside an attempt."""

    def __init__(self, inner: UpstreamClient, tracer: RequestTracer) -> None:
        self.inner = inner
        self._tracer = tracer

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str] | None:
        carrier: dict[str, str] = {}
        self._tracer.inject(carrier)
        if not carrier:
            return headers
        return {**(headers if headers is not None else _JSON_HEADERS), **carrier}

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: dict[str, str] | None = None, timeouts: UpstreamTimeouts) -> UpstreamResponse:
        return await self.inner.request(method, url, body=body, headers=self._headers(headers), timeouts=timeouts)

    async def open_stream(self, method: str, url: str, *, body: bytes | None = None,
                          headers: dict[str, str] | None = None, timeouts: UpstreamTimeouts) -> UpstreamStream:
        return await self.inner.open_stream(method, url, body=body, headers=self._headers(headers),
                                            timeouts=timeouts)

    async def aclose(self) -> None:
        await self.inner.aclose()
