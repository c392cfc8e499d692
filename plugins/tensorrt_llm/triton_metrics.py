"""Triton's Prometheus page as the router's load signal.

Names from tensorrtllm_backend README.md "Triton Metrics" and server docs/user_guide/metrics.md:
- `nv_trt_llm_request_metrics{request_type="active"|"scheduled"|"max"|"waiting"|"context"}`:
  the TensorRT-LLM batch manager's own counts (running = active, capacity = max, queued = waiting);
- `nv_inference_pending_request_count{model=...}`: requests Triton holds before a backend runs them;
- `nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used"|"max"|...}`: KV-cache blocks.
"""

from __future__ import annotations

from gateway.backend import BackendLoad
from gateway.prometheus_text import parse_samples, total, values_of

_REQUESTS = "nv_trt_llm_request_metrics"
_PENDING = "nv_inference_pending_request_count"
_KV_BLOCKS = "nv_trt_llm_kv_cache_block_metrics"


def parse_load(text: str, trtllm_model: str | None = None) -> BackendLoad:
    """Running, waiting, KV-cache use and capacity; `trtllm_model` picks one model's labels."""
    samples = parse_samples(text, (_REQUESTS, _PENDING, _KV_BLOCKS))
    running = total(samples, _REQUESTS, request_type="active", model=trtllm_model)
    capacity = total(samples, _REQUESTS, request_type="max", model=trtllm_model)
    queued = total(samples, _REQUESTS, request_type="waiting", model=trtllm_model)
    pending = values_of(samples, _PENDING)
    waiting: float | None = None
    if queued is not None or pending:
        # Queued inside TensorRT-LLM's executor plus held by Triton in front of any model.
        waiting = (queued or 0.0) + sum(pending)
    used = total(samples, _KV_BLOCKS, kv_cache_block_type="used", model=trtllm_model)
    blocks = total(samples, _KV_BLOCKS, kv_cache_block_type="max", model=trtllm_model)
    kv = used / blocks if used is not None and blocks else None
    return BackendLoad(running=running, waiting=waiting, kv_cache_usage=kv, capacity=capacity)
