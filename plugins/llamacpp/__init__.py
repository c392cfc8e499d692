"""Backend for llama.cpp's server (llama-server), optionally launched and supervised by the gateway."""

from __future__ import annotations

from gateway.hookspecs import RegisterBackend, hookimpl
from plugins.llamacpp.backend import LlamaCppBackend

__all__ = ["LlamaCppBackend"]


@hookimpl
def register_backends(register: RegisterBackend) -> None:
    register("llamacpp", LlamaCppBackend)
