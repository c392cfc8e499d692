"""The TGI emulator (plugins/tgi/emulator) for the contract suite, and helpers to run it.

TGI needs a GPU image, so its emulator stands in: a subprocess on a free port of 127.0.0.1,
ready once `GET /health` answers 200, always stopped afterwards.
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

NAME = "tgi"
# TGI serves no embeddings (that is text-embeddings-inference, another server).
FEATURES: frozenset[str] = frozenset({"chat", "stream", "completion", "faults", "tokenize"})
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the emulated server says it serves


class TGIEmulatorProcess(ManagedSubprocess):
    """`python -m plugins.tgi.emulator` on a free port of 127.0.0.1."""

    def __init__(self, log_path: Path, *, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "plugins.tgi.emulator", "--host", "127.0.0.1", "--port", str(self.port),
                "--model-id", MODEL_ID, *(extra or [])]
        super().__init__("tgi emulator", argv, log_path)

    @property
    def knobs_url(self) -> str:
        return self.url + "/__emulator/knobs"

    def wait_ready(self, timeout: float = 30.0) -> TGIEmulatorProcess:
        self.wait_http(self.url + "/health", timeout, lambda r: r.status_code == 200)
        return self

    def knobs(self, **changes: Any) -> dict[str, Any]:
        """Change the running emulator's knobs (fault, pacing, capacity); returns them all."""
        response = httpx.post(self.knobs_url, json=changes, timeout=10)
        assert response.status_code == 200, response.text
        knobs: dict[str, Any] = response.json()
        return knobs

    def requests_seen(self) -> dict[str, int]:
        """How many requests each route has received so far."""
        seen: dict[str, int] = httpx.get(self.url + "/__emulator/requests", timeout=10).json()
        return seen


@contextmanager
def running_emulator(log_path: Path, *, extra: list[str] | None = None) -> Iterator[TGIEmulatorProcess]:
    """A started emulator (extra command-line flags in `extra`), stopped however the block ends."""
    emulator = TGIEmulatorProcess(log_path, extra=extra)
    try:
        emulator.wait_ready()
        yield emulator
    finally:
        emulator.stop()


def backend_config(url: str, *, name: str = NAME, **extra: Any) -> dict[str, Any]:
    """A gateway `backends:` entry for a TGI server at `url`."""
    return {"name": name, "plugin": "tgi", "model": MODEL_ID, "url": url, **extra}


@contextmanager
def start(tmp_path: Path) -> Iterator[Provided]:
    """Start the emulator on a free port, yield how to reach it, always stop it."""
    with running_emulator(tmp_path / "tgi-emulator.log") as emulator:
        yield Provided(backend=backend_config(emulator.url), model=NAME, knobs_url=emulator.knobs_url)
