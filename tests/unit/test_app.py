"""The OpenAI routes of the real ASGI app on fake backends: statuses, headers, bodies."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.backend import BackendUnavailable
from gateway.errors import backend_failed
from gateway.state import GatewayState

from .conftest import running_gateway
from .fakes import (
    BACKEND_MODEL,
    DONE,
    FakeUpstream,
    ScriptedStream,
    assert_error_shape,
    chunk_event,
    fake_registry,
    gateway_config,
)

CHAT: dict[str, Any] = {"model": "my-model", "messages": [{"role": "user", "content": "hi"}]}

TWO_ROUTES: dict[str, Any] = {
    "server": {"max_body_bytes": 2000},
    "backends": [
        {"name": "f1", "plugin": "fake", "model": BACKEND_MODEL},
        {"name": "f2", "plugin": "fake", "model": "other-model"},
    ],
    "routes": [{"model": "exact", "backends": ["f1", "f2"]}, {"model": "fam-*", "backends": ["f2"]}],
}


def error_of(response: Any) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json")
    return assert_error_shape(msgspec.json.decode(response.content))


async def test_chat_answers_with_the_clients_model_name_and_backend_header() -> None:
    async with running_gateway() as gw:
        response = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        body = response.json()
        assert body["model"] == "my-model"
        assert body["choices"][0]["message"]["content"] == "hello"
        assert response.headers["x-gateway-backend"] == "f1"
        assert response.headers["x-request-id"]
        assert gw.backend().calls == [("chat", CHAT)]


async def test_stream_passes_events_through_renamed_and_ends_with_done() -> None:
    async with running_gateway() as gw:
        response = await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-gateway-backend"] == "f1"
        assert response.content == chunk_event("hel", "my-model") + chunk_event("lo", "my-model") + DONE
        assert gw.backend().streams[0].closed


async def test_stream_failing_after_its_first_event_ends_with_an_error_event() -> None:
    async with running_gateway() as gw:
        gw.backend().stream_factory = lambda: ScriptedStream([chunk_event("x"), backend_failed("f1", "cut")])
        response = await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert response.status_code == 200
        events = response.content.split(b"\n\n")
        assert events[0] == chunk_event("x", "my-model")[:-2]
        assert events[1].startswith(b"data: ")
        error = assert_error_shape(msgspec.json.decode(events[1][len(b"data: "):]))
        assert error["code"] == "backend_error"
        assert "cut" in error["message"]
        assert b"[DONE]" not in response.content


async def test_client_request_id_is_echoed() -> None:
    async with running_gateway() as gw:
        response = await gw.client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "req-42"})
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == "req-42"


async def test_unknown_model_is_404_exact_route_and_glob_route_serve() -> None:
    async with running_gateway(TWO_ROUTES) as gw:
        response = await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
        assert response.status_code == 404
        error = error_of(response)
        assert (error["param"], error["code"]) == ("model", "model_not_found")

        response = await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "exact"})
        assert (response.status_code, response.headers["x-gateway-backend"]) == (200, "f1")
        response = await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "fam-7b"})
        assert (response.status_code, response.headers["x-gateway-backend"]) == (200, "f2")
        assert response.json()["model"] == "fam-7b"

        models = (await gw.client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["exact", "other-model"]


async def test_body_over_the_limit_is_413() -> None:
    async with running_gateway(TWO_ROUTES) as gw:
        big = {**CHAT, "model": "exact", "messages": [{"role": "user", "content": "x" * 5000}]}
        response = await gw.client.post("/v1/chat/completions", json=big)
        assert response.status_code == 413
        assert error_of(response)["code"] == "request_too_large"
        assert gw.backend("f1").calls == []


async def test_get_on_an_openai_route_is_405_and_unknown_path_404() -> None:
    async with running_gateway() as gw:
        response = await gw.client.get("/v1/chat/completions")
        assert response.status_code == 405
        error_of(response)
        response = await gw.client.get("/v1/nothing-here")
        assert response.status_code == 404
        error_of(response)


async def test_bad_field_is_400_naming_it_and_reaches_no_backend() -> None:
    async with running_gateway() as gw:
        response = await gw.client.post(
            "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": 1}]}
        )
        assert response.status_code == 400
        assert error_of(response)["param"] == "messages[0].content"
        assert gw.backend().calls == []


async def test_unsupported_parameter_is_422_naming_it() -> None:
    async with running_gateway() as gw:
        response = await gw.client.post("/v1/chat/completions", json={**CHAT, "foo": 1})
        assert response.status_code == 422
        error = error_of(response)
        assert (error["param"], error["code"]) == ("foo", "unsupported_parameter")


async def test_every_backend_unavailable_is_503_with_retry_after() -> None:
    async with running_gateway(TWO_ROUTES) as gw:
        gw.backend("f1").reply = BackendUnavailable("f1", "connection refused")
        gw.backend("f2").reply = BackendUnavailable("f2", "busy", mark_down=False)
        response = await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "exact"})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        error = error_of(response)
        assert error["code"] == "no_healthy_backend"
        assert "f1: connection refused" in error["message"] and "f2: busy" in error["message"]


async def test_ready_reports_unhealthy_backends() -> None:
    async with running_gateway() as gw:
        assert (await gw.client.get("/ready")).status_code == 200
        gw.state.health.mark("f1", False, "probe refused")
        response = await gw.client.get("/ready")
        assert response.status_code == 503
        assert "probe refused" in error_of(response)["message"]


async def test_metrics_count_requests_by_route_backend_and_status() -> None:
    async with running_gateway(TWO_ROUTES) as gw:
        await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "exact"})
        await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "exact"})
        await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "unknown"})
        gw.backend("f2").stream_factory = lambda: ScriptedStream([chunk_event("x"), backend_failed("f2", "cut")])
        await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "fam-1", "stream": True})
        text = (await gw.client.get("/metrics")).text
        assert 'gateway_requests_total{backend="f1",route="exact",status="200"} 2.0' in text
        assert 'gateway_requests_total{backend="",route="",status="404"} 1.0' in text
        assert 'gateway_stream_errors_total{backend="f2",route="fam-*"} 1.0' in text
        assert 'gateway_backend_healthy{backend="f1"} 1.0' in text


async def test_startup_failure_names_the_backend_and_closes_everything() -> None:
    state = GatewayState(gateway_config(TWO_ROUTES), fake_registry(), upstream=FakeUpstream())

    async def refuse() -> None:
        raise OSError("port in use")

    state.backends["f2"].start = refuse  # type: ignore[method-assign]
    with pytest.raises(RuntimeError) as info:
        await state.startup()
    assert "f2: port in use" in str(info.value)
    assert all(b.closed for b in state.backends.values())  # type: ignore[attr-defined]
    assert state.upstream.closed  # type: ignore[attr-defined]
