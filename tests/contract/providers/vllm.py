"""The real vLLM server (CPU build, SmolLM2-135M converted by scripts/setup-vllm) for the contract suite.

Fails with "run scripts/setup-vllm" when the vLLM environment is missing, or skips with
GATEWAY_TESTS_SKIP_VLLM=1. A real server cannot be told to misbehave, so no "faults".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backends.vllm_server import BACKEND_TIMEOUTS, require_vllm, running_vllm

from contract.providers.base import Provided

NAME = "vllm"
# No embeddings: vLLM serves /v1/embeddings only for an embedding model, and SmolLM2 generates.
FEATURES: frozenset[str] = frozenset({"chat", "stream", "completion", "tokenize"})


@contextmanager
def start(tmp_path: Path) -> Iterator[Provided]:
    """Start vLLM on a free port (~45-60 s on 2 cores), yield how to reach it, always stop it."""
    require_vllm()
    with running_vllm(tmp_path / "vllm-contract", served_name=NAME) as server:
        yield Provided(
            backend={"name": NAME, "plugin": "vllm", "model": NAME, "url": server.url + "/v1",
                     "timeouts": dict(BACKEND_TIMEOUTS)},
            model=NAME,
        )
