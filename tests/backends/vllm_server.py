"""The real vLLM server (CPU build from `scripts/setup-vllm`) as a test subprocess, and its session fixture.

Test modules import the `vllm_server` fixture from here. pytest makes one fixture definition
per importing module, so the server itself is kept in a module-level slot: the first module
to ask starts it, every later one gets the same process, and the session's teardown stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_process import REPO_ROOT, ManagedSubprocess, StartupError, free_port

VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
VLLM_MODEL_DIR = REPO_ROOT / ".cache" / "models" / "smollm2-135m-instruct-hf"
VLLM_MODEL = "smollm2-hf"  # --served-model-name: what requests to the server must name
SKIP_ENV = "GATEWAY_TESTS_SKIP_VLLM"
# Measured 44-60 s on 2 cores (backends-on-cpu.md); generous because other suites share the CPU.
STARTUP_TIMEOUT_S = 180.0
# Plugin-level timeouts for test backends: CPU decoding runs at 7-18 tok/s.
BACKEND_TIMEOUTS = {"connect_s": 2, "first_token_s": 60, "total_s": 120}


class VLLMServer(ManagedSubprocess):
    """`python -m vllm.entrypoints.openai.api_server` serving SmolLM2-135M (fp32, eager, 2048 tokens)."""

    def __init__(self, port: int, log_path: Path, *, served_name: str = VLLM_MODEL) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.served_name = served_name
        argv = [
            str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(VLLM_MODEL_DIR),
            "--served-model-name", served_name, "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
            "--host", "127.0.0.1", "--port", str(port),
        ]
        env = {
            # The CPU build reserves this many GiB for KV cache (its default of 4 is more than
            # a 135M model with 2048 tokens needs), and pins OpenMP threads to cores unless told
            # not to, which fights with the other test processes on a small machine.
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
        }
        super().__init__("vLLM server", argv, log_path, env=env)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> VLLMServer:
        """Until `GET /health` answers 200 (the engine is up and the API server listening)."""
        self.wait_http(self.url + "/health", timeout, lambda r: r.status_code == 200)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        # The API server takes its engine-core child down with it on SIGTERM.
        return super().stop(sig, timeout)


def missing_setup() -> str | None:
    """Why the real vLLM cannot run here, or None when `scripts/setup-vllm` has been run."""
    if not VLLM_PYTHON.exists():
        return f"{VLLM_PYTHON.parent.parent} is missing"
    if not (VLLM_MODEL_DIR / ".stamp-converted").exists():
        return f"the converted model {VLLM_MODEL_DIR} is missing"
    return None


def require_vllm() -> None:
    """Fail (or skip, with GATEWAY_TESTS_SKIP_VLLM=1) when the vLLM environment is not set up."""
    why = missing_setup()
    if why is None:
        return
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"real vLLM not set up ({why}) and {SKIP_ENV}=1")
    pytest.fail(f"real vLLM not set up: {why}; run scripts/setup-vllm (or set {SKIP_ENV}=1 to skip)",
                pytrace=False)


@contextlib.contextmanager
def running_vllm(log_dir: Path, *, served_name: str = VLLM_MODEL) -> Iterator[VLLMServer]:
    """A started vLLM server on a free port, always stopped on exit; `StartupError` if it does not come up."""
    log_dir.mkdir(parents=True, exist_ok=True)
    server = VLLMServer(free_port(), log_dir / "vllm-server.log", served_name=served_name)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


class _Shared:
    """The session's one server, started on first use by whichever module asks first."""

    server: VLLMServer | None = None
    failure: str | None = None
    stack: contextlib.ExitStack | None = None


def _shared_server(log_dir: Path) -> VLLMServer:
    if _Shared.failure is not None:
        pytest.fail(_Shared.failure, pytrace=False)  # do not retry a 3-minute start per module
    if _Shared.server is None:
        stack = contextlib.ExitStack()
        try:
            _Shared.server = stack.enter_context(running_vllm(log_dir))
        except StartupError as err:
            _Shared.failure = str(err)
        else:
            _Shared.stack = stack
        if _Shared.failure is not None:
            pytest.fail(_Shared.failure, pytrace=False)
    assert _Shared.server is not None
    return _Shared.server


def _stop_shared() -> None:
    if _Shared.stack is not None:
        _Shared.stack.close()
    _Shared.server = _Shared.stack = None


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """The real vLLM server (SmolLM2-135M on CPU), shared by every test module of the session."""
    require_vllm()
    server = _shared_server(tmp_path_factory.getbasetemp() / "vllm")
    yield server
    _stop_shared()
