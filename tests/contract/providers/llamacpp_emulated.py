"""The llama.cpp emulator (plugins/llamacpp/emulator) behind the llamacpp plugin, for the fault tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway_process import EmulatorProcess, running_emulator

from contract.providers.base import Provided

NAME = "llamacpp_emulated"
FEATURES: frozenset[str] = frozenset({"chat", "stream", "completion", "tokenize", "faults"})


@contextmanager
def start(tmp_path: Path) -> Iterator[Provided]:
    process = EmulatorProcess("plugins.llamacpp.emulator", tmp_path / "llamacpp-emulator.log", ["--alias", NAME])
    with running_emulator(process) as emulator:
        yield Provided(backend={"name": NAME, "plugin": "llamacpp", "model": NAME, "url": emulator.url},
                       model=NAME, knobs_url=emulator.knobs_url)
