"""The `tensorrt_llm` backend type: one config name, two ways TensorRT-LLM is served."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.backend import BackendContext
from gateway.config import BackendConfig
from plugins.tensorrt_llm.options import check_options, mode_of
from plugins.tensorrt_llm.serve_backend import TrtllmServeBackend
from plugins.tensorrt_llm.triton_backend import TritonBackend


class TensorRTLLMBackend:
    """Builds the backend for `options.mode`: `trtllm_serve` (default) or `triton`.

    Calling the class returns a `TrtllmServeBackend` or a `TritonBackend`, so the registry
    and `gateway backends` see one backend type named `tensorrt_llm`.
    """

    def __new__(cls, config: BackendConfig, context: BackendContext) -> TrtllmServeBackend | TritonBackend:  # type: ignore[misc]
        if mode_of(config.options) == "triton":
            return TritonBackend(config, context)
        return TrtllmServeBackend(config, context)

    @staticmethod
    def validate_config(config: BackendConfig) -> Iterable[tuple[str, str]]:
        if config.url is None:
            yield ("url", "required key is missing")
        yield from check_options(config.options)
