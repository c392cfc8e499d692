"""The llama.cpp emulator (plugins/llamacpp/emulator) behind the llamacpp plugin, for the fault tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from contract.providers.base import Provided
from contract.providers.vllm_emulated import running

NAME = "llamacpp_emulated"
FEATURES: frozenset[str] = frozenset({"chat", "stream", "completion", "tokenize", "faults"})


@contextmanager
def start(tmp_path: Path) -> Iterator[Provided]:
    with running("plugins.llamacpp.emulator", tmp_path / "llamacpp-emulator.log", ["--alias", NAME]) as emulator:
        yield Provided(backend={"name": NAME, "plugin": "llamacpp", "model": NAME, "url": emulator.url},
                       model=NAME, knobs_url=emulator.knobs_url)
