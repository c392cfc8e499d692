"""The TGI emulator (plugins/tgi/emulator) for the contract suite, and helpers to run it.

TGI needs a GPU image, so its emulator stands in: a subprocess on a free port of 127.0.0.1,
ready once `GET /health` answers 200, always stopped afterwards.
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

NAME = "tgi"
# TGI serves no embeddings (that is text-embeddings-inference, another server).
FEATURES: frozenset[str] = frozenset({"chat", "stream", "completion", "faults", "tokenize"})
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the emulated server says it serves


class TGIEmulatorProcess(EmulatorProcess):
    """`python -m plugins.tgi.emulator` on a free port of 127.0.0.1."""

    def __init__(self, log_path: Path, *, extra: list[str] | None = None) -> None:
        super().__init__("plugins.tgi.emulator", log_path, ["--model-id", MODEL_ID, *(extra or [])],
                         name="tgi emulator")

    def requests_seen(self) -> dict[str, int]:
        """How many requests each route has received so far."""
        seen: dict[str, int] = httpx.get(self.url + "/__emulator/requests", timeout=10).json()
        return seen


@contextmanager
def running_emulator(log_path: Path, *, extra: list[str] | None = None) -> Iterator[TGIEmulatorProcess]:
    """A started emulator (extra command-line flags in `extra`), stopped however the block ends."""
    with started(TGIEmulatorProcess(log_path, extra=extra)) as emulator:
        yield emulator


def backend_config(url: str, *, name: str = NAME, **extra: Any) -> dict[str, Any]:
    """A gateway `backends:` entry for a TGI server at `url`."""
    return {"name": name, "plugin": "tgi", "model": MODEL_ID, "url": url, **extra}


@contextmanager
def start(tmp_path: Path) -> Iterator[Provided]:
    """Start the emulator on a free port, yield how to reach it, always stop it."""
    with running_emulator(tmp_path / "tgi-emulator.log") as emulator:
        yield Provided(backend=backend_config(emulator.url), model=NAME, knobs_url=emulator.knobs_url)
