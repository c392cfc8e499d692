"""The Ollama emulator (plugins/ollama/emulator) for the contract suite, and a helper to run it.

Ollama's binary does not run here, so its emulator stands in: a subprocess on a free port,
ready once `GET /api/version` answers, always stopped afterwards.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from gateway_process import ManagedSubprocess, free_port

from contract.providers.base import Provided

NAME = "ollama"
FEATURES = frozenset({"chat", "stream", "completion", "embeddings", "faults"})
MODEL = "llama3.2"  # the model the emulated server has pulled and the backend asks for


class OllamaEmulatorProcess(ManagedSubprocess):
    """`python -m plugins.ollama.emulator` on a free port of 127.0.0.1."""

    def __init__(self, log_path: Path, *, models: list[str] | None = None, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "plugins.ollama.emulator", "--host", "127.0.0.1", "--port", str(self.port),
                "--models", ",".join(models or [MODEL, "all-minilm"]), *(extra or [])]
        super().__init__("ollama emulator", argv, log_path)

    @property
    def knobs_url(self) -> str:
        return self.url + "/__emulator/knobs"

    def wait_ready(self, timeout: float = 30.0) -> OllamaEmulatorProcess:
        self.wait_http(self.url + "/api/version", timeout, lambda r: r.status_code == 200)
        return self

    def knobs(self, **changes: Any) -> dict[str, Any]:
        response = httpx.post(self.knobs_url, json=changes, timeout=10)
        assert response.status_code == 200, response.text
        knobs: dict[str, Any] = response.json()
        return knobs

    def requests(self) -> list[dict[str, Any]]:
        """The bodies of the last inference requests the emulator received, oldest first."""
        recorded: list[dict[str, Any]] = httpx.get(self.url + "/__emulator/requests", timeout=10).json()
        return recorded


@contextmanager
def running_emulator(log_path: Path, **kwargs: Any) -> Iterator[OllamaEmulatorProcess]:
    """A started emulator, stopped however the block ends."""
    emulator = OllamaEmulatorProcess(log_path, **kwargs)
    try:
        emulator.wait_ready()
        yield emulator
    finally:
        emulator.stop()


def backend_config(url: str, *, name: str = NAME, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    """A gateway `backends:` entry for an Ollama server at `url`."""
    return {"name": name, "plugin": "ollama", "model": model, "url": url, **extra}


@contextmanager
def start(tmp_path: Path) -> Iterator[Provided]:
    with running_emulator(tmp_path / "ollama-emulator.log") as emulator:
        yield Provided(
            backend=backend_config(emulator.url, options={"keep_alive": "5m", "num_ctx": 4096}),
            model=NAME,
            knobs_url=emulator.knobs_url,
        )
