"""The vLLM emulator (plugins/vllm/emulator) behind the vllm plugin, so the fault tests reach that plugin.

Also holds `EmulatorProcess`, the subprocess wrapper the llama.cpp emulator provider reuses.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway_process import ManagedSubprocess, free_port

from contract.providers.base import Provided

NAME = "vllm_emulated"
FEATURES: frozenset[str] = frozenset({"chat", "stream", "completion", "tokenize", "faults"})


class EmulatorProcess(ManagedSubprocess):
    """`python -m <module> --port P` on a free port of 127.0.0.1, ready once `GET /health` answers 200."""

    def __init__(self, module: str, log_path: Path, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(self.port), *extra]
        super().__init__(module, argv, log_path)

    @property
    def knobs_url(self) -> str:
        return self.url + "/__emulator/knobs"

    def wait_ready(self, timeout: float = 30.0) -> EmulatorProcess:
        self.wait_http(self.url + "/health", timeout, lambda r: r.status_code == 200)
        return self


@contextmanager
def running(module: str, log_path: Path, extra: list[str]) -> Iterator[EmulatorProcess]:
    """A started emulator, stopped (by its PID) however the block ends."""
    process = EmulatorProcess(module, log_path, extra)
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@contextmanager
def start(tmp_path: Path) -> Iterator[Provided]:
    with running("plugins.vllm.emulator", tmp_path / "vllm-emulator.log", ["--served-model-name", NAME]) as emulator:
        yield Provided(backend={"name": NAME, "plugin": "vllm", "model": NAME, "url": emulator.url + "/v1"},
                       model=NAME, knobs_url=emulator.knobs_url)
