"""trtllm-serve, emulated (plugins/tensorrt_llm/emulator, mode trtllm_serve), for the contract suite.

`emulator()` is shared with the Triton provider and the tensorrt_llm backend tests: it runs
`python -m plugins.tensorrt_llm.emulator` as a child process, waits until it answers and
always stops it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway_process import EmulatorProcess, running_emulator

from contract.providers.base import Provided

NAME = "trtllm_serve"
FEATURES = frozenset({"chat", "stream", "completion", "faults"})

# Where each mode says it is up: trtllm-serve's /health, Triton's model-ready route.
_READY = {"trtllm_serve": "/health", "triton": "/v2/models/ensemble/ready"}


@contextmanager
def emulator(mode: str, tmp_path: Path, *args: str, timeout: float = 30.0) -> Iterator[EmulatorProcess]:
    """A started emulator of `mode`, stopped on exit whatever happens."""
    process = EmulatorProcess("plugins.tensorrt_llm.emulator", tmp_path / f"tensorrt-llm-{mode}.log",
                              ["--mode", mode, *args], ready_path=_READY[mode], name=f"tensorrt_llm emulator ({mode})")
    with running_emulator(process, timeout) as started:
        yield started


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
