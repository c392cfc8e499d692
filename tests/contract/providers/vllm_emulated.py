"""The vLLM emulator (plugins/vllm/emulator) behind the vllm plugin, so the fault tests reach that plugin."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway_process import EmulatorProcess, running_emulator

from contract.providers.base import Provided

NAME = "vllm_emulated"
FEATURES: frozenset[str] = frozenset({"chat", "stream", "completion", "tokenize", "faults"})


@contextmanager
def start(tmp_path: Path) -> Iterator[Provided]:
    process = EmulatorProcess("plugins.vllm.emulator", tmp_path / "vllm-emulator.log", ["--served-model-name", NAME])
    with running_emulator(process) as emulator:
        yield Provided(backend={"name": NAME, "plugin": "vllm", "model": NAME, "url": emulator.url + "/v1"},
                       model=NAME, knobs_url=emulator.knobs_url)
