"""Backend for vLLM's OpenAI-compatible server (`vllm serve` / `vllm.entrypoints.openai.api_server`)."""

from __future__ import annotations

from gateway.hookspecs import RegisterBackend, hookimpl
from plugins.vllm.backend import VLLMBackend

__all__ = ["VLLMBackend"]


@hookimpl
def register_backends(register: RegisterBackend) -> None:
    register("vllm", VLLMBackend)
