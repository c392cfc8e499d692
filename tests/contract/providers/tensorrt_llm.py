"""trtllm-serve, emulated (plugins/tensorrt_llm/emulator, mode trtllm_serve), for the contract suite.

`emulator()` is shared with the Triton provider and the tensorrt_llm backend tests: it runs
`python -m plugins.tensorrt_llm.emulator` as a child process, waits until it answers and
always stops it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway_process import ManagedSubprocess, free_port

from contract.providers.base import Provided

NAME = "trtllm_serve"
FEATURES = frozenset({"chat", "stream", "completion", "faults"})

# Where each mode says it is up: trtllm-serve's /health, Triton's model-ready route.
_READY = {"trtllm_serve": "/health", "triton": "/v2/models/ensemble/ready"}


class Emulator(ManagedSubprocess):
    """One running TensorRT-LLM emulator."""

    def __init__(self, mode: str, log_path: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.knobs_url = self.url + "/__emulator/knobs"
        argv = [sys.executable, "-m", "plugins.tensorrt_llm.emulator", "--mode", mode, "--host", "127.0.0.1",
                "--port", str(self.port), *args]
        super().__init__(f"tensorrt_llm emulator ({mode})", argv, log_path)
        self.mode = mode


@contextmanager
def emulator(mode: str, tmp_path: Path, *args: str, timeout: float = 30.0) -> Iterator[Emulator]:
    """A started emulator of `mode`, stopped on exit whatever happens."""
    process = Emulator(mode, tmp_path / f"tensorrt-llm-{mode}.log", *args)
    try:
        process.wait_http(process.url + _READY[mode], timeout, lambda r: r.status_code == 200)
        yield process
    finally:
        process.stop()


def backend_block(name: str, url: str, mode: str, **options: Any) -> dict[str, Any]:
    """The gateway config block of a tensorrt_llm backend in front of an emulator."""
    if mode == "triton":
        # The emulator serves Triton's metrics on its one port (real Triton: --metrics-port 8002).
        options = {"mode": "triton", "metrics_url": url + "/metrics", **options}
        model = name
    else:
        options = {"mode": "trtllm_serve", **options}
        model = "TinyLlama-1.1B-Chat-v1.0"  # the model id trtllm-serve is started with
    return {"name": name, "plugin": "tensorrt_llm", "model": model, "url": url, "options": options}


@contextmanager
def start(tmp_path: Path) -> Iterator[Provided]:
    with emulator("trtllm_serve", tmp_path) as process:
        yield Provided(backend=backend_block(NAME, process.url, "trtllm_serve"), model=NAME,
                       knobs_url=process.knobs_url)
