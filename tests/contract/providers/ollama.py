"""The Ollama emulator (plugins/ollama/emulator) for the contract suite, and a helper to run it.

Ollama's binary does not run here, so its emulator stands in: a subprocess on a free port,
ready once `GET /api/version` answers, always stopped afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from gateway_process import EmulatorProcess
from gateway_process import running_emulator as started

from contract.providers.base import Provided

NAME = "ollama"
FEATURES = frozenset({"chat", "stream", "completion", "embeddings", "faults"})
MODEL = "llama3.2"  # the model the emulated server has pulled and the backend asks for


class OllamaEmulatorProcess(EmulatorProcess):
    """`python -m plugins.ollama.emulator` on a free port of 127.0.0.1."""

    def __init__(self, log_path: Path, *, models: list[str] | None = None, extra: list[str] | None = None) -> None:
        super().__init__("plugins.ollama.emulator", log_path,
                         ["--models", ",".join(models or [MODEL, "all-minilm"]), *(extra or [])],
                         ready_path="/api/version", name="ollama emulator")

    def requests(self) -> list[dict[str, Any]]:
        """The bodies of the last inference requests the emulator received, oldest first."""
        recorded: list[dict[str, Any]] = httpx.get(self.url + "/__emulator/requests", timeout=10).json()
        return recorded


@contextmanager
def running_emulator(log_path: Path, **kwargs: Any) -> Iterator[OllamaEmulatorProcess]:
    """A started emulator, stopped however the block ends."""
    with started(OllamaEmulatorProcess(log_path, **kwargs)) as emulator:
        yield emulator


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
