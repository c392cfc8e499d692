"""Backend for Ollama: OpenAI requests served through Ollama's native `/api/*` routes."""

from __future__ import annotations

from gateway.hookspecs import RegisterBackend, hookimpl
from plugins.ollama.backend import OllamaBackend

__all__ = ["OllamaBackend"]


@hookimpl
def register_backends(register: RegisterBackend) -> None:
    register("ollama", OllamaBackend)
