"""Backend for NVIDIA TensorRT-LLM, served by `trtllm-serve` or by Triton with the TensorRT-LLM backend."""

from __future__ import annotations

from gateway.hookspecs import RegisterBackend, hookimpl
from plugins.tensorrt_llm.backend import TensorRTLLMBackend

__all__ = ["TensorRTLLMBackend"]


@hookimpl
def register_backends(register: RegisterBackend) -> None:
    register("tensorrt_llm", TensorRTLLMBackend)
