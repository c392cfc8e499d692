"""The gen_ai_* series (OpenTelemetry GenAI conventions in Prometheus form): what /metrics shows after
real requests through the app, with the labels and counts each request should leave."""

from __future__ import annotations

from typing import Any

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from gateway.errors import GatewayError
from gateway.genai_metrics import DURATION_BUCKETS, LoopHistogram

from .conftest import running_gateway
from .fakes import BACKEND_MODEL, DONE, ScriptedStream, chunk_event

CONFIG: dict[str, Any] = {
    "backends": [{"name": "f1", "plugin": "fake", "model": BACKEND_MODEL, "url": "http://gpu-1:8000"}],
    "routes": [{"model": "chat", "backends": ["f1"]}],
}
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
F1 = {"gen_ai_provider_name": "fake", "gen_ai_request_model": "chat", "gen_ai_response_model": BACKEND_MODEL,
      "server_address": "gpu-1", "server_port": "8000", "gateway_backend": "f1"}


def reply(prompt: int, completion: int) -> bytes:
    return msgspec.json.encode({
        "id": "c1", "object": "chat.completion", "created": 1, "model": BACKEND_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })


def usage_event(prompt: int, completion: int) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": BACKEND_MODEL, "choices": [],
             "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


def samples(text: str, name: str, **labels: str) -> dict[str, float]:
    """{sample name: value} of the series of `name` whose labels include `labels`, summed over the rest."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if all(sample.labels.get(k) == v for k, v in labels.items()) and "le" not in sample.labels:
                found[sample.name] = found.get(sample.name, 0.0) + sample.value
    return found


async def metrics_text(gw: Any) -> str:
    response = await gw.client.get("/metrics")
    assert response.status_code == 200
    return str(response.text)


async def test_json_and_streamed_requests_fill_the_genai_series_with_the_backends_usage() -> None:
    async with running_gateway(CONFIG) as gw:
        gw.backend().reply = reply(5, 9)
        for _ in range(2):
            assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        gw.backend().stream_factory = lambda: ScriptedStream(
            [chunk_event("a"), chunk_event("b"), chunk_event("c") + usage_event(7, 3) + DONE])
        streamed = await gw.client.post("/v1/chat/completions", json={
            **CHAT, "stream": True, "stream_options": {"include_usage": True}})
        assert streamed.status_code == 200 and b"[DONE]" in streamed.content
        text = await metrics_text(gw)

    chat = {"gen_ai_operation_name": "chat", **F1}
    duration = samples(text, "gen_ai_server_request_duration_seconds", **chat, error_type="")
    assert duration["gen_ai_server_request_duration_seconds_count"] == 3
    assert duration["gen_ai_server_request_duration_seconds_sum"] > 0
    # Time to first token and per output token: the stream only.
    ttft = samples(text, "gen_ai_server_time_to_first_token_seconds", **chat)
    assert ttft["gen_ai_server_time_to_first_token_seconds_count"] == 1
    assert 0 < ttft["gen_ai_server_time_to_first_token_seconds_sum"] <= duration[
        "gen_ai_server_request_duration_seconds_sum"]
    assert samples(text, "gen_ai_server_time_per_output_token_seconds", **chat)[
        "gen_ai_server_time_per_output_token_seconds_count"] == 1
    # Token usage: exactly what the backend reported, per type.
    inputs = samples(text, "gen_ai_client_token_usage", **chat, gen_ai_token_type="input")
    outputs = samples(text, "gen_ai_client_token_usage", **chat, gen_ai_token_type="output")
    assert inputs == {"gen_ai_client_token_usage_count": 3, "gen_ai_client_token_usage_sum": 5 + 5 + 7}
    assert outputs == {"gen_ai_client_token_usage_count": 3, "gen_ai_client_token_usage_sum": 9 + 9 + 3}
    # The gateway_* series dashboards already read are still there.
    assert samples(text, "gateway_requests", route="chat", backend="f1", status="200")["gateway_requests_total"] == 3
    assert samples(text, "gateway_request_duration_seconds", route="chat")[
        "gateway_request_duration_seconds_count"] == 3


async def test_operation_names_follow_the_endpoint_and_embeddings_count_no_output_tokens() -> None:
    config = {**CONFIG, "routes": [{"model": "chat", "backends": ["f1"], "cache": {"mode": "off"}}]}
    async with running_gateway(config) as gw:
        gw.backend().reply = reply(4, 2)
        assert (await gw.client.post("/v1/completions", json={"model": "chat", "prompt": "hi"})).status_code == 200
        gw.backend().reply = msgspec.json.encode({
            "object": "list", "model": BACKEND_MODEL, "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
            "usage": {"prompt_tokens": 6, "total_tokens": 6}})
        assert (await gw.client.post("/v1/embeddings", json={"model": "chat", "input": "hi"})).status_code == 200
        text = await metrics_text(gw)

    name = "gen_ai_server_request_duration_seconds_count"
    assert samples(text, "gen_ai_server_request_duration_seconds", gen_ai_operation_name="text_completion")[name] == 1
    assert samples(text, "gen_ai_server_request_duration_seconds", gen_ai_operation_name="embeddings")[name] == 1
    assert samples(text, "gen_ai_client_token_usage", gen_ai_operation_name="text_completion",
                   gen_ai_token_type="output")["gen_ai_client_token_usage_sum"] == 2
    assert samples(text, "gen_ai_client_token_usage", gen_ai_operation_name="embeddings", gen_ai_token_type="input")[
        "gen_ai_client_token_usage_sum"] == 6
    assert samples(text, "gen_ai_client_token_usage", gen_ai_operation_name="embeddings",
                   gen_ai_token_type="output") == {}
    # No stream, no time to first token.
    assert samples(text, "gen_ai_server_time_to_first_token_seconds") == {}


async def test_errors_carry_error_type_and_no_usage_or_first_token() -> None:
    async with running_gateway(CONFIG) as gw:
        gw.backend().reply = GatewayError(503, "backend down", type="api_error")
        gw.backend().stream_factory = GatewayError(503, "backend down", type="api_error")
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status_code == 503
        assert (await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": True})).status_code == 503
        unknown = await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "no-such-model"})
        assert unknown.status_code == 404
        text = await metrics_text(gw)

    count = "gen_ai_server_request_duration_seconds_count"
    # No backend answered: the gateway did, and the client's unknown model never becomes a label value.
    failed = samples(text, "gen_ai_server_request_duration_seconds", error_type="503")
    assert failed[count] == 2
    refused = samples(text, "gen_ai_server_request_duration_seconds", error_type="404")
    assert refused[count] == 1
    assert "no-such-model" not in text
    assert samples(text, "gen_ai_server_request_duration_seconds", error_type="") == {}
    assert samples(text, "gen_ai_server_time_to_first_token_seconds") == {}
    assert samples(text, "gen_ai_client_token_usage") == {}


async def test_a_cache_hit_is_labelled_cache_and_consumes_no_backend_tokens() -> None:
    deterministic = {**CHAT, "temperature": 0}
    async with running_gateway(CONFIG) as gw:
        gw.backend().reply = reply(5, 9)
        first = await gw.client.post("/v1/chat/completions", json=deterministic)
        second = await gw.client.post("/v1/chat/completions", json=deterministic)
        assert first.headers["x-gateway-cache"] == "miss" and second.headers["x-gateway-cache"] == "hit"
        text = await metrics_text(gw)

    hit = samples(text, "gen_ai_server_request_duration_seconds", gateway_backend="cache", error_type="")
    assert hit["gen_ai_server_request_duration_seconds_count"] == 1
    assert samples(text, "gen_ai_server_request_duration_seconds", gateway_backend="cache",
                   gen_ai_provider_name="cache")
    usage = samples(text, "gen_ai_client_token_usage", gen_ai_token_type="input")
    assert usage == {"gen_ai_client_token_usage_count": 1, "gen_ai_client_token_usage_sum": 5}  # the miss only


def test_the_loop_histogram_renders_cumulative_buckets_like_prometheus() -> None:
    histogram = LoopHistogram("x_seconds", "doc", ("a",), DURATION_BUCKETS, "seconds")
    series = histogram.child(("1",))
    for value in (0.005, 0.01, 0.015, 100.0):
        histogram.observe(series, value)
    family = next(iter(histogram.collect()))
    values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert values[("x_seconds_bucket", "0.01")] == 2  # le is inclusive
    assert values[("x_seconds_bucket", "0.02")] == 3
    assert values[("x_seconds_bucket", "81.92")] == 3
    assert values[("x_seconds_bucket", "+Inf")] == 4
    assert values[("x_seconds_count", None)] == 4
    assert abs(values[("x_seconds_sum", None)] - 100.03) < 1e-9
