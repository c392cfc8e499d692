"""Reading vLLM's Prometheus `/metrics` page for the load signal the router uses."""

from __future__ import annotations

from gateway.backend import BackendLoad
from gateway.prometheus_text import parse_samples, total, values_of

# V1 engine names (vllm/v1/metrics/loggers.py, `PrometheusStatLogger`): one sample per engine
# core, labelled engine="<index>" and model_name. KV use is a fraction, "1 means 100 percent".
_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV = "vllm:kv_cache_usage_perc"
# The V0 engine's name for the same gauge (vllm/engine/metrics.py, vLLM <= 0.10); V1 renamed it.
_KV_OLD = "vllm:gpu_cache_usage_perc"
_WANTED = frozenset({_RUNNING, _WAITING, _KV, _KV_OLD})


def parse_load(text: str) -> BackendLoad:
    """Requests running and waiting (summed over engines) and mean KV-cache use, 0..1."""
    samples = parse_samples(text, _WANTED)
    kv = values_of(samples, _KV) or values_of(samples, _KV_OLD)
    # With data parallelism every engine reports its own queue and its own KV pool: the
    # server's queue is the sum, its KV pressure the mean of equally sized pools.
    return BackendLoad(
        running=total(samples, _RUNNING),
        waiting=total(samples, _WAITING),
        kv_cache_usage=sum(kv) / len(kv) if kv else None,
    )
