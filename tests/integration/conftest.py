"""The session's gateways: one in front of the real llama.cpp server, one in front of the fake upstream."""

from __future__ import annotations

from typing import Any

import pytest
from fake_openai_server import FakeOpenAIServer
from gateway_process import LLAMA_MODEL, GatewayProcess, LlamaServer, closed_port

# Routes of the fake-upstream gateway. The gateway sends each backend's `model` to the fake,
# which picks the matching scenario; `ok` always answers normally.
FAST = {"connect_s": 2, "first_token_s": 20, "total_s": 30}


@pytest.fixture(scope="session")
def llama_gateway(session_gateway_factory: Any, llama_server: LlamaServer) -> GatewayProcess:
    """The gateway with one `llamacpp` backend pointing at the session's llama.cpp server."""
    config = {
        "server": {"health_interval_s": 1.0},
        "backends": [{
            "name": "llama", "plugin": "llamacpp", "model": LLAMA_MODEL, "url": llama_server.url,
            "timeouts": {"connect_s": 2, "first_token_s": 60, "total_s": 120},
        }],
        "routes": [
            {"model": "smollm2", "backends": ["llama"]},
            {"model": "tiny-chat", "backends": ["llama"]},  # a second client-facing name for the same backend
        ],
    }
    gateway: GatewayProcess = session_gateway_factory(config, name="llama-gateway")
    return gateway


def fake_gateway_config(fake_url: str, *, max_body_bytes: int = 4096) -> dict[str, Any]:
    dead_a, dead_b = closed_port(), closed_port()

    def backend(name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "plugin": "openai_compat", "model": name, "url": fake_url,
                "timeouts": extra.pop("timeouts", FAST), **extra}

    backends = [
        backend("ok"),
        backend("held"),
        backend("slow_total", timeouts={"connect_s": 2, "first_token_s": 30, "total_s": 1}),
        backend("slow_first", timeouts={"connect_s": 2, "first_token_s": 1, "total_s": 30}),
        backend("bad_request"),
        backend("server_error"),
        backend("busy"),
        backend("broken_stream"),
        {"name": "dead_a", "plugin": "openai_compat", "model": "dead_a", "url": f"http://127.0.0.1:{dead_a}",
         "timeouts": FAST},
        {"name": "dead_b", "plugin": "openai_compat", "model": "dead_b", "url": f"http://127.0.0.1:{dead_b}",
         "timeouts": FAST},
    ]
    simple = ["ok", "held", "slow_total", "slow_first", "bad_request", "server_error", "busy", "broken_stream"]
    routes = [{"model": name, "backends": [name]} for name in simple]
    routes += [
        {"model": "dead_only", "backends": ["dead_a", "dead_b"]},
        {"model": "fallback", "backends": ["dead_a", "ok"]},
        {"model": "fallback_busy", "backends": ["busy", "ok"]},
        {"model": "fallback_error", "backends": ["server_error", "ok"]},
        {"model": "fallback_slow", "backends": ["slow_first", "ok"]},
        {"model": "fallback_broken", "backends": ["broken_stream", "ok"]},
    ]
    return {
        "server": {"max_body_bytes": max_body_bytes, "health_interval_s": 1.0},
        "backends": backends,
        "routes": routes,
    }


@pytest.fixture(scope="session")
def fake_gateway(session_gateway_factory: Any, fake_upstream: FakeOpenAIServer) -> GatewayProcess:
    """The gateway in front of the scriptable fake upstream (routes named after scenarios)."""
    gateway: GatewayProcess = session_gateway_factory(fake_gateway_config(fake_upstream.url), name="fake-gateway")
    return gateway


@pytest.fixture
def fake(fake_upstream: FakeOpenAIServer) -> Any:
    """The fake upstream with every scenario reset to normal before and after the test."""
    fake_upstream.scenarios.clear()
    yield fake_upstream
    for scenario in fake_upstream.scenarios.values():
        scenario.release.set()
    fake_upstream.scenarios.clear()


@pytest.fixture
def still_serves(fake_gateway: GatewayProcess) -> Any:
    """Call it after an error case: the gateway still answers a normal request."""
    return lambda: assert_serves(fake_gateway)


def assert_serves(gateway: GatewayProcess) -> None:
    client = gateway.client()
    response = client.chat.completions.with_raw_response.create(
        model="ok", messages=[{"role": "user", "content": "still there?"}]
    )
    assert response.status_code == 200
    assert response.headers["x-gateway-backend"] == "ok"
    completion = response.parse()
    assert completion.choices[0].message.content == "Hello, world!"
    assert completion.model == "ok"
