"""Triton's Prometheus page as the router's load signal.

Names from tensorrtllm_backend README.md "Triton Metrics" and server docs/user_guide/metrics.md:
- `nv_trt_llm_request_metrics{request_type="active"|"scheduled"|"max"|"waiting"|"context"}`:
  the TensorRT-LLM batch manager's own counts (running = active, capacity = max, queued = waiting);
- `nv_inference_pending_request_count{model=...}`: requests Triton holds before a backend runs them;
- `nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used"|"max"|...}`: KV-cache blocks.
"""

from __future__ import annotations

import re

from gateway.backend import BackendLoad

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_WANTED = ("nv_trt_llm_request_metrics", "nv_inference_pending_request_count", "nv_trt_llm_kv_cache_block_metrics")

Sample = tuple[str, dict[str, str], float]


def _samples(text: str) -> list[Sample]:
    found: list[Sample] = []
    for line in text.splitlines():
        if not line.startswith(_WANTED):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        found.append((match.group(1), dict(_LABEL.findall(match.group(2) or "")), value))
    return found


def _sum(samples: list[Sample], name: str, key: str, wanted: str, model: str | None) -> float | None:
    values = [v for n, labels, v in samples
              if n == name and labels.get(key) == wanted and (model is None or labels.get("model") == model)]
    return sum(values) if values else None


def parse_load(text: str, trtllm_model: str | None = None) -> BackendLoad:
    """Running, waiting, KV-cache use and capacity; `trtllm_model` picks one model's labels."""
    samples = _samples(text)
    running = _sum(samples, "nv_trt_llm_request_metrics", "request_type", "active", trtllm_model)
    capacity = _sum(samples, "nv_trt_llm_request_metrics", "request_type", "max", trtllm_model)
    queued = _sum(samples, "nv_trt_llm_request_metrics", "request_type", "waiting", trtllm_model)
    pending = [v for n, _, v in samples if n == "nv_inference_pending_request_count"]
    waiting: float | None = None
    if queued is not None or pending:
        # Queued inside TensorRT-LLM's executor plus held by Triton in front of any model.
        waiting = (queued or 0.0) + sum(pending)
    used = _sum(samples, "nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "used", trtllm_model)
    total = _sum(samples, "nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "max", trtllm_model)
    kv = used / total if used is not None and total else None
    return BackendLoad(running=running, waiting=waiting, kv_cache_usage=kv, capacity=capacity)
