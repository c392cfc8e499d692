"""Backend for Hugging Face text-generation-inference (TGI), and its emulator for tests."""

from __future__ import annotations

from gateway.hookspecs import RegisterBackend, hookimpl
from plugins.tgi.backend import TGIBackend

__all__ = ["TGIBackend"]


@hookimpl
def register_backends(register: RegisterBackend) -> None:
    register("tgi", TGIBackend)
