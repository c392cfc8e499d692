"""Triton's Prometheus page with the TensorRT-LLM batch manager's metrics, from the emulator's state.

Names, labels and label order as in tensorrtllm_backend README.md "Triton Metrics" (a real
page: `nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 0`)
and server docs/user_guide/metrics.md (`nv_inference_pending_request_count` and the counters).
"""

from __future__ import annotations

from dataclasses import dataclass

from plugins.emulation import EmulatorRuntime

_TRTLLM = "tensorrt_llm"  # the batch manager's model in the ensemble (its metrics carry this label)
_KV_BLOCKS = 6239  # README's example page: max 6239 blocks of 64 tokens
_BLOCKS_PER_REQUEST = 4


@dataclass
class TritonCounters:
    """Request outcomes of the text model, for nv_inference_request_success / _failure."""

    success: int = 0
    failure: int = 0


def _gauge(lines: list[str], name: str, help_text: str, kind: str, samples: list[tuple[str, float]]) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        number = int(value) if float(value).is_integer() else value
        lines.append(f"{name}{{{labels}}} {number}")


def metrics_page(runtime: EmulatorRuntime, counters: TritonCounters, model_name: str) -> str:
    """The text of GET /metrics now."""
    running, waiting = runtime.running, runtime.waiting
    capacity = runtime.knobs.max_concurrency or 512  # README: request_type="max" ... 512
    used = min(_KV_BLOCKS, running * _BLOCKS_PER_REQUEST)
    models = [model_name, "preprocessing", _TRTLLM, "postprocessing"]
    lines: list[str] = []

    def per_model(value: float, only: str | None = None) -> list[tuple[str, float]]:
        return [(f'model="{m}",version="1"', value if (only is None or m == only) else 0) for m in models]

    done = counters.success + counters.failure
    _gauge(lines, "nv_inference_request_success", "Number of successful inference requests, all batch sizes",
           "counter", per_model(counters.success, model_name))
    _gauge(lines, "nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
           "counter", per_model(counters.failure, model_name))
    _gauge(lines, "nv_inference_count", "Number of inferences performed (does not include cached requests)",
           "counter", per_model(counters.success))
    _gauge(lines, "nv_inference_exec_count",
           "Number of model executions performed (does not include cached requests)", "counter",
           per_model(done))
    # Requests wait inside TensorRT-LLM's executor (request_type="waiting"), not in Triton's queue.
    _gauge(lines, "nv_inference_pending_request_count",
           "Instantaneous number of pending requests awaiting execution per-model.", "gauge", per_model(0))
    trt = f'model="{_TRTLLM}"'
    _gauge(lines, "nv_trt_llm_request_metrics", "TRT LLM request metrics", "gauge", [
        (f'{trt},request_type="waiting",version="1"', waiting),
        (f'{trt},request_type="context",version="1"', 0),
        (f'{trt},request_type="scheduled",version="1"', running),
        (f'{trt},request_type="max",version="1"', capacity),
        (f'{trt},request_type="active",version="1"', running),
    ])
    _gauge(lines, "nv_trt_llm_kv_cache_block_metrics", "TRT LLM KV cache block metrics", "gauge", [
        (f'kv_cache_block_type="fraction",{trt},version="1"', round(used / _KV_BLOCKS, 4)),
        (f'kv_cache_block_type="tokens_per",{trt},version="1"', 64),
        (f'kv_cache_block_type="used",{trt},version="1"', used),
        (f'kv_cache_block_type="free",{trt},version="1"', _KV_BLOCKS - used),
        (f'kv_cache_block_type="max",{trt},version="1"', _KV_BLOCKS),
    ])
    _gauge(lines, "nv_trt_llm_general_metrics", "General TRT LLM metrics", "gauge", [
        (f'general_type="iteration_counter",{trt},version="1"', runtime.requests_total),
    ])
    return "\n".join(lines) + "\n"
