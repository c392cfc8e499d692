"""The managed backend: the gateway launches llama.cpp itself (configs/local.yaml), restarts it, and stops it.

The llama.cpp child is found through /proc as the gateway process's child running
`plugins.llamacpp.launcher`; nothing here matches processes by name machine-wide.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from gateway_process import REPO_ROOT, GatewayProcess, cmdline, pid_alive, wait_until

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Say hi."}]


def local_config() -> dict[str, Any]:
    """configs/local.yaml as shipped, with faster health checks so recovery is seen sooner."""
    config: dict[str, Any] = yaml.safe_load((REPO_ROOT / "configs" / "local.yaml").read_text())
    config["server"] = {"health_interval_s": 0.5}
    return config


def start_managed(factory: Any, name: str) -> GatewayProcess:
    gateway: GatewayProcess = factory(local_config(), name=name, timeout=180)
    return gateway


def the_llama_child(gateway: GatewayProcess) -> int:
    children = gateway.llama_children()
    assert len(children) == 1, f"expected one llama.cpp child of the gateway, found {children}"
    return children[0]


def ask(gateway: GatewayProcess, model: str = "smollm2") -> Any:
    return gateway.client(timeout=30).chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=2, temperature=0)


@pytest.fixture(scope="module")
def managed_gateway(session_gateway_factory: Any, smollm2_path: Path) -> GatewayProcess:
    return start_managed(session_gateway_factory, "managed")


def test_managed_backend_becomes_ready_and_answers(managed_gateway: GatewayProcess) -> None:
    child = the_llama_child(managed_gateway)
    assert "--alias" in cmdline(child) and "smollm2" in cmdline(child)
    response = ask(managed_gateway)
    assert response.status_code == 200
    assert response.headers["x-gateway-backend"] == "local"
    completion = response.parse()
    assert completion.model == "smollm2"
    assert completion.choices[0].message.content
    # The shipped config also routes any other model name to the local server.
    assert ask(managed_gateway, model="gpt-4o-mini").parse().model == "gpt-4o-mini"
    with managed_gateway.http() as http:
        assert http.get("/ready").json()["backends"] == {"local": True}
    # The exact route and the `*` route's backend model, listed once.
    assert [m.id for m in managed_gateway.client().models.list().data] == ["smollm2"]


def test_supervisor_restarts_a_killed_server(managed_gateway: GatewayProcess) -> None:
    old = the_llama_child(managed_gateway)
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(old), timeout=10), "the killed llama.cpp process is still alive"

    def answers() -> bool:
        try:
            return bool(ask(managed_gateway).status_code == 200)
        except openai.APIError:
            return False

    assert wait_until(answers, timeout=90, interval=0.5), (
        "requests did not succeed again after the llama.cpp server was killed:\n" + managed_gateway.log_tail())
    new = the_llama_child(managed_gateway)
    assert new != old
    assert managed_gateway.alive()
    assert "restart" in managed_gateway.log_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_gateway_stops_its_llama_server(gateway_factory: Any, smollm2_path: Path, sig: int) -> None:
    gateway = start_managed(gateway_factory, f"managed-stop-{sig}")
    child = the_llama_child(gateway)
    port = cmdline(child)[cmdline(child).index("--port") + 1]
    assert ask(gateway).status_code == 200

    gateway.stop(sig, timeout=30)
    assert not gateway.alive()
    assert wait_until(lambda: not pid_alive(child), timeout=10), f"llama.cpp child {child} outlived the gateway"
    leftovers = [
        int(p.name) for p in Path("/proc").iterdir()
        if p.name.isdigit() and pid_alive(int(p.name))
        and "plugins.llamacpp.launcher" in cmdline(int(p.name)) and port in cmdline(int(p.name))
    ]
    assert leftovers == [], f"llama.cpp server(s) still running on port {port}: {leftovers}"
    assert "Application shutdown complete" in gateway.log_text()


def test_a_killed_gateway_leaves_no_llama_server_behind(gateway_factory: Any, smollm2_path: Path) -> None:
    # SIGKILL gives the gateway no chance to stop its child: the launcher must notice by itself.
    gateway = start_managed(gateway_factory, "managed-sigkill")
    child = the_llama_child(gateway)
    assert ask(gateway).status_code == 200
    gateway.stop(signal.SIGKILL, timeout=10)
    assert wait_until(lambda: not pid_alive(child), timeout=15), f"llama.cpp child {child} outlived a killed gateway"
