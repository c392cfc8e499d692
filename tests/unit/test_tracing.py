"""OpenTelemetry traces: a server span per request, a client span per backend attempt under it, the
caller's traceparent continued and the attempt's carried to the backend; nothing at all when off."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.backend import BackendUnavailable
from gateway.config import ConfigError, parse_config
from gateway.errors import GatewayError
from gateway.observability_settings import TracingConfig
from gateway.state import GatewayState
from gateway.tracing import make_tracer
from gateway.upstream import UpstreamResponse, UpstreamTimeouts

from .conftest import GatewayUnderTest, gateway_serving
from .fakes import BACKEND_MODEL, FakeUpstream, ScriptedStream, chunk_event, fake_registry, gateway_config, make_backend

CONFIG: dict[str, Any] = {
    "backends": [{"name": "f1", "plugin": "fake", "model": BACKEND_MODEL, "url": "http://gpu-1:8000"},
                 {"name": "f2", "plugin": "fake", "model": "other/model", "url": "http://gpu-2:8001"}],
    "routes": [{"model": "chat", "backends": ["f1", "f2"], "retries": {"attempts": 3, "backoff_s": 0}}],
}
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@asynccontextmanager
async def traced_gateway(raw: dict[str, Any] = CONFIG, *, sample_ratio: float = 1.0,
                         ) -> AsyncIterator[tuple[GatewayUnderTest, InMemorySpanExporter]]:
    """The app with tracing on, its spans kept in memory (exported as each ends)."""
    exporter = InMemorySpanExporter()
    state = GatewayState(gateway_config(raw), fake_registry(), upstream=FakeUpstream())
    state.tracer = state.dispatcher.tracer = make_tracer(
        TracingConfig(enabled=True, sample_ratio=sample_ratio), exporter)
    async with gateway_serving(state) as gw:
        yield gw, exporter


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind == kind]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_request_is_one_server_span_with_one_client_span_per_attempt() -> None:
    async with traced_gateway() as (gw, exporter):
        response = await gw.client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "r-1"})
        assert response.status_code == 200
        spans = exporter.get_finished_spans()
    [server] = by_kind(spans, SpanKind.SERVER)
    [attempt] = by_kind(spans, SpanKind.CLIENT)
    assert len(spans) == 2
    assert server.name == "chat chat" and attempt.name == f"chat {BACKEND_MODEL}"
    assert attempt.context.trace_id == server.context.trace_id
    assert parent_of(attempt) == server.context.span_id
    assert server.parent is None
    assert dict(server.attributes or {}) | {"gateway.cost_usd": 0} == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "chat", "gen_ai.response.model": BACKEND_MODEL,
        "gen_ai.provider.name": "fake", "gen_ai.usage.input_tokens": 1, "gen_ai.usage.output_tokens": 1,
        "http.request.method": "POST", "url.path": "/v1/chat/completions", "http.response.status_code": 200,
        "gateway.request_id": "r-1", "gateway.route": "chat", "gateway.backend": "f1", "gateway.cache": "bypass",
        "gateway.stream": False, "gateway.speculative": False, "gateway.tenant": "anonymous", "gateway.cost_usd": 0,
    }
    assert dict(attempt.attributes or {}) == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "fake", "gen_ai.request.model": BACKEND_MODEL,
        "gateway.backend": "f1", "gateway.attempt": 1, "gateway.attempt.reason": "first",
        "server.address": "gpu-1", "server.port": 8000,
    }
    assert server.status.status_code == attempt.status.status_code == StatusCode.UNSET


async def test_a_fallback_gives_two_attempt_spans_the_failed_one_marked_error() -> None:
    async with traced_gateway() as (gw, exporter):
        gw.backend("f1").reply = BackendUnavailable("f1", "connection refused")
        response = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200 and response.headers["x-gateway-backend"] == "f2"
        spans = exporter.get_finished_spans()
    [server] = by_kind(spans, SpanKind.SERVER)
    failed, served = sorted(by_kind(spans, SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    assert {parent_of(failed), parent_of(served)} == {server.context.span_id}
    assert failed.attributes is not None and served.attributes is not None
    assert (failed.attributes["gateway.backend"], failed.attributes["gateway.attempt"],
            failed.attributes["gateway.attempt.reason"], failed.attributes["error.type"]) == (
        "f1", 1, "first", "refused")
    assert failed.status.status_code == StatusCode.ERROR and "connection refused" in (failed.status.description or "")
    assert (served.attributes["gateway.backend"], served.attributes["gateway.attempt"],
            served.attributes["gateway.attempt.reason"]) == ("f2", 2, "fallback")
    assert "error.type" not in served.attributes and served.status.status_code == StatusCode.UNSET
    assert served.name == "chat other/model" and served.attributes["server.port"] == 8001
    assert server.attributes is not None and server.attributes["gen_ai.response.model"] == "other/model"


async def test_a_retry_of_the_same_backend_and_a_failed_request() -> None:
    raw = {**CONFIG, "routes": [{"model": "chat", "backends": ["f1"], "retries": {"attempts": 2, "backoff_s": 0}}]}
    async with traced_gateway(raw) as (gw, exporter):
        gw.backend("f1").reply = GatewayError(503, "overloaded", type="api_error")
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status_code == 503
        assert (await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})).status_code == 404
        spans = exporter.get_finished_spans()
    failed_request, unknown = by_kind(spans, SpanKind.SERVER)
    attempts = by_kind(spans, SpanKind.CLIENT)
    assert [(a.attributes or {})["gateway.attempt.reason"] for a in attempts] == ["first", "retry"]
    assert all((a.attributes or {})["error.type"] == "503" for a in attempts)
    assert failed_request.status.status_code == StatusCode.ERROR
    assert (failed_request.attributes or {})["error.type"] == "503"
    # A 4xx is the caller's error: error.type says it, the server span's status stays unset.
    assert (unknown.attributes or {})["error.type"] == "404" and unknown.status.status_code == StatusCode.UNSET
    assert unknown.name == "chat nope"


async def test_a_stream_attempt_ends_at_the_first_token_and_the_request_span_at_the_last_byte() -> None:
    async with traced_gateway() as (gw, exporter):
        response = await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert response.status_code == 200 and b"[DONE]" in response.content
        spans = exporter.get_finished_spans()
    [server] = by_kind(spans, SpanKind.SERVER)
    [attempt] = by_kind(spans, SpanKind.CLIENT)
    assert parent_of(attempt) == server.context.span_id
    assert attempt.end_time is not None and server.end_time is not None and attempt.end_time <= server.end_time
    assert server.attributes is not None and server.attributes["gateway.stream"] is True
    assert 0 < server.attributes["gateway.ttft_s"]  # type: ignore[operator]


async def test_a_stream_cut_after_its_first_byte_marks_the_request_span_in_error() -> None:
    async with traced_gateway() as (gw, exporter):
        gw.backend("f1").stream_factory = lambda: ScriptedStream(
            [chunk_event("partial"), BackendUnavailable("f1", "connection reset mid-stream")])
        response = await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert response.status_code == 200 and "[DONE]" not in response.text  # the cut came after the headers
        spans = exporter.get_finished_spans()
    [server] = by_kind(spans, SpanKind.SERVER)
    attributes = server.attributes or {}
    assert attributes["http.response.status_code"] == 200
    assert attributes["error.type"] and attributes["error.type"] in response.text  # the error event's code
    assert server.status.status_code == StatusCode.ERROR


async def test_an_incoming_traceparent_continues_the_callers_trace_and_its_sampling() -> None:
    # Sampling new traces at 0: only the caller's sampled trace is recorded, as its child.
    async with traced_gateway(sample_ratio=0.0) as (gw, exporter):
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert exporter.get_finished_spans() == ()
        headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=1"}
        assert (await gw.client.post("/v1/chat/completions", json=CHAT, headers=headers)).status_code == 200
        spans = exporter.get_finished_spans()
    [server] = by_kind(spans, SpanKind.SERVER)
    [attempt] = by_kind(spans, SpanKind.CLIENT)
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert parent_of(server) == int(PARENT_ID, 16) and server.parent is not None and server.parent.is_remote
    assert attempt.context.trace_id == server.context.trace_id
    assert server.context.trace_state.get("vendor") == "1"


class RecordingUpstream(FakeUpstream):
    """Keeps the headers of each request."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[dict[str, str] | None] = []

    async def request(self, method: str, url: str, **kwargs: Any) -> Any:
        self.headers.append(kwargs.get("headers"))
        return UpstreamResponse(status=200, body=b"{}")


async def test_an_attempt_sends_its_traceparent_to_the_backend() -> None:
    exporter = InMemorySpanExporter()
    tracer = make_tracer(TracingConfig(enabled=True), exporter)
    assert tracer is not None
    inner = RecordingUpstream()
    upstream = tracer.propagating(inner)
    assert tracer.propagating(upstream) is upstream  # wrapped once, whatever a reload hands over
    timeouts = UpstreamTimeouts(connect_s=1, first_byte_s=1, total_s=1)
    await upstream.request("GET", "http://gpu-1:8000/health", timeouts=timeouts)  # no span: nothing added
    backend = make_backend("f1", url="http://gpu-1:8000")
    call = upstream.request("POST", "http://gpu-1:8000/v1/chat/completions", headers={"x-api-key": "k"},
                            timeouts=timeouts)
    await tracer.attempt(call, backend, "chat", 1, [])
    [attempt] = exporter.get_finished_spans()
    assert inner.headers[0] is None
    sent = inner.headers[1]
    assert sent is not None and sent["x-api-key"] == "k"
    version, trace_id, span_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", f"{attempt.context.trace_id:032x}", f"{attempt.context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled


async def test_tracing_turned_on_by_a_reload_warns_about_the_backends_it_kept(
        caplog: pytest.LogCaptureFixture) -> None:
    off = GatewayState(gateway_config(CONFIG), fake_registry(), upstream=FakeUpstream())
    changed = {**CONFIG, "backends": [CONFIG["backends"][0], {**CONFIG["backends"][1], "url": "http://gpu-3:8001"}]}
    with caplog.at_level("WARNING", logger="gateway"):
        on = GatewayState(gateway_config({**changed, "tracing": {"enabled": True}}), fake_registry(), previous=off)
    try:
        assert on.carried_backends == {"f1"} and on.tracer is not None
        [warning] = [r.getMessage() for r in caplog.records if "tracing turned on" in r.getMessage()]
        assert "(f1)" in warning  # f2 was rebuilt with the propagating client: not named
    finally:
        await on.shutdown()


def test_the_section_is_checked() -> None:
    base = {"backends": [{"name": "f1", "plugin": "fake", "model": "m"}],
            "routes": [{"model": "*", "backends": ["f1"]}]}
    assert parse_config(base, env={}, validators=fake_registry().validators()).tracing.enabled is False
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "tracing": {"enabled": True, "sample_ratio": 2, "endpoint": "collector:4318"}},
                     env={}, validators=fake_registry().validators())
    assert "tracing.sample_ratio" in str(err.value) and "tracing.endpoint" in str(err.value)


_WITHOUT_OTEL = textwrap.dedent('''
    import asyncio, importlib.abc, sys
    class NoOtel(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, NoOtel())
    sys.path[:0] = [sys.argv[1]]
    from unit.conftest import running_gateway
    from gateway.config import ConfigError, parse_config

    async def main() -> None:
        async with running_gateway({"backends": [{"name": "f1", "plugin": "fake", "model": "m"}],
                                    "routes": [{"model": "*", "backends": ["f1"]}],
                                    "logging": {"access": False}}) as gw:
            assert gw.state.tracer is None and gw.state.dispatcher.tracer is None
            for stream in (False, True):
                body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
                assert (await gw.client.post("/v1/chat/completions", json=body)).status_code == 200
        try:
            parse_config({"backends": [{"name": "f1", "plugin": "openai_compat", "model": "m",
                                        "url": "http://h:1"}],
                          "routes": [{"model": "*", "backends": ["f1"]}], "tracing": {"enabled": True}}, env={})
        except ConfigError as err:
            assert "pip install '.[otel]'" in str(err), err
        else:
            raise AssertionError("tracing.enabled without OpenTelemetry passed the config check")
        print("ok", sorted(m for m in sys.modules if m.startswith("opentelemetry")))

    asyncio.run(main())
''')


def test_off_it_needs_no_opentelemetry_at_all() -> None:
    tests = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _WITHOUT_OTEL, str(tests)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "ok []"
