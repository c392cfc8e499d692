"""trtllm-serve's `/metrics` (iteration statistics) as the router's load signal.

`GET /metrics` answers a JSON list of the executor's iteration stats gathered since the last
call, drained as they are read (TensorRT-LLM docs/source/commands/trtllm-serve/trtllm-serve.rst,
"Metrics Endpoint"; tensorrt_llm/serve/openai_server.py get_iteration_stats). Field names are
those of the executor's IterationStats: numActiveRequests, numQueuedRequests,
maxNumActiveRequests, kvCacheStats.{usedNumBlocks,maxNumBlocks},
inflightBatchingStats.numPausedRequests.
"""

from __future__ import annotations

import msgspec

from gateway.backend import BackendLoad


class KvCacheStats(msgspec.Struct, rename="camel"):
    """`kvCacheStats` of one iteration."""

    used_num_blocks: int | None = None
    max_num_blocks: int | None = None


class InflightBatchingStats(msgspec.Struct, rename="camel"):
    """`inflightBatchingStats` of one iteration."""

    num_paused_requests: int | None = None


class IterationStats(msgspec.Struct, rename="camel"):
    """The fields of one iteration's stats the router reads; the rest are ignored."""

    iter: int | None = None
    num_active_requests: int | None = None
    num_queued_requests: int | None = None
    max_num_active_requests: int | None = None
    kv_cache_stats: KvCacheStats | None = None
    inflight_batching_stats: InflightBatchingStats | None = None


decode_stats = msgspec.json.Decoder(list[IterationStats]).decode


def load_from_stats(stats: IterationStats) -> BackendLoad:
    """The latest iteration as load: paused requests wait as much as queued ones."""
    waiting: float | None = None
    if stats.num_queued_requests is not None:
        paused = stats.inflight_batching_stats.num_paused_requests if stats.inflight_batching_stats else None
        waiting = float(stats.num_queued_requests + (paused or 0))
    kv: float | None = None
    cache = stats.kv_cache_stats
    if cache is not None and cache.used_num_blocks is not None and cache.max_num_blocks:
        kv = cache.used_num_blocks / cache.max_num_blocks
    running = stats.num_active_requests
    capacity = stats.max_num_active_requests
    return BackendLoad(
        running=None if running is None else float(running),
        waiting=waiting,
        kv_cache_usage=kv,
        capacity=None if capacity is None else float(capacity),
    )


class IterationLoad:
    """Remembers what the last read said, because the server hands each iteration out only once."""

    def __init__(self) -> None:
        self.last: BackendLoad | None = None

    def update(self, body: bytes) -> BackendLoad:
        """Load from a `/metrics` body; an empty list means no iteration ran since the last read."""
        try:
            stats = decode_stats(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return self.last or BackendLoad()
        if stats:
            self.last = load_from_stats(stats[-1])
            return self.last
        if self.last is None:
            return BackendLoad()  # stats never seen: they may be switched off (enable_iter_perf_stats)
        # The executor ran no iteration since the last read, so nothing is running or queued.
        return BackendLoad(running=0.0, waiting=0.0, kv_cache_usage=self.last.kv_cache_usage,
                           capacity=self.last.capacity)
