"""Backend for any OpenAI-compatible server; the base of the vLLM, trtllm-serve and llama.cpp plugins."""

from __future__ import annotations

from gateway.hookspecs import RegisterBackend, hookimpl
from plugins.openai_compat.backend import OpenAICompatBackend

__all__ = ["OpenAICompatBackend"]


@hookimpl
def register_backends(register: RegisterBackend) -> None:
    register("openai_compat", OpenAICompatBackend)
