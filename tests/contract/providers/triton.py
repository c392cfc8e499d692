"""Triton Inference Server with the TensorRT-LLM backend, emulated (mode triton), for the contract suite."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from contract.providers.base import Provided
from contract.providers.tensorrt_llm import backend_block, emulator

NAME = "triton"
FEATURES = frozenset({"chat", "stream", "completion", "faults"})


@contextmanager
def start(tmp_path: Path) -> Iterator[Provided]:
    with emulator("triton", tmp_path) as process:
        yield Provided(backend=backend_block(NAME, process.url, "triton"), model=NAME, knobs_url=process.knobs_url)
