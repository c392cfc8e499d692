"""Operational routes of a running gateway: /health, /ready, /metrics, /v1/models."""

from __future__ import annotations

from typing import Any

import pytest
from gateway_process import GatewayProcess, assert_openai_error, closed_port, samples, value

pytestmark = pytest.mark.integration

def test_health(llama_gateway: GatewayProcess) -> None:
    with llama_gateway.http() as http:
        response = http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_with_a_healthy_backend(llama_gateway: GatewayProcess) -> None:
    with llama_gateway.http() as http:
        response = http.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "backends": {"llama": True}}


def test_ready_is_503_when_the_only_backend_is_dead(gateway_factory: Any) -> None:
    port = closed_port()
    gateway = gateway_factory({
        "backends": [{"name": "gone", "plugin": "openai_compat", "model": "m", "url": f"http://127.0.0.1:{port}"}],
        "routes": [{"model": "m", "backends": ["gone"]}],
    }, name="dead-gateway", expect_ready=False)
    with gateway.http() as http:
        ready = http.get("/ready")
        health = http.get("/health")
        chat = http.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    error = assert_openai_error(ready, 503, code="not_ready")
    assert "gone" in error["message"]
    assert ready.headers.get("retry-after")
    assert health.status_code == 200  # alive, just not ready
    assert "gone" in assert_openai_error(chat, 503, code="no_healthy_backend")["message"]


def test_metrics_count_requests_by_route_backend_and_status(llama_gateway: GatewayProcess) -> None:
    client = llama_gateway.client()
    with llama_gateway.http() as http:
        before = http.get("/metrics").text
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        # Read to the end: a client that hangs up mid-stream is counted as 499, not 200.
        list(client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=1, stream=True))
        assert http.post("/v1/chat/completions", json={"model": "nope", "messages": []}).status_code == 400
        assert http.post("/v1/chat/completions", json={
            "model": "nope", "messages": [{"role": "user", "content": "x"}]}).status_code == 404
        response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE gateway_requests_total counter" in text

    def delta(**labels: str) -> float:
        return (value(text, "gateway_requests_total", **labels) or 0.0) - (
            value(before, "gateway_requests_total", **labels) or 0.0)

    assert delta(route="smollm2", backend="llama", status="200") == 1
    assert delta(route="tiny-chat", backend="llama", status="200") == 1
    assert delta(route="", backend="", status="404") == 1
    for labels, _ in samples(text, "gateway_requests_total"):
        assert set(labels) == {"route", "backend", "status"}
    assert value(text, "gateway_backend_healthy", backend="llama") == 1.0
    assert value(text, "gateway_request_duration_seconds_count", route="smollm2", backend="llama")
    assert value(text, "gateway_time_to_first_token_seconds_count", route="tiny-chat", backend="llama")


def test_models_lists_the_route_names(llama_gateway: GatewayProcess) -> None:
    models = llama_gateway.client().models.list()
    assert [m.id for m in models.data] == ["smollm2", "tiny-chat"]
    assert all(m.object == "model" for m in models.data)
    with llama_gateway.http() as http:
        raw = http.get("/v1/models").json()
    assert raw["object"] == "list"
    assert {m["id"] for m in raw["data"]} == {"smollm2", "tiny-chat"}


def test_models_on_a_gateway_with_many_routes(fake_gateway: GatewayProcess) -> None:
    ids = [m.id for m in fake_gateway.client().models.list().data]
    assert "ok" in ids and "fallback" in ids and "dead_only" in ids
    assert len(ids) == len(set(ids))
