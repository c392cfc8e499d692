"""Reading TGI's Prometheus page (`GET /metrics`) for the load signal the router uses.

Names from huggingface/text-generation-inference docs/source/reference/metrics.md:
`tgi_queue_size` (requests waiting for the batcher) and `tgi_batch_current_size` (requests
in the running batch). TGI reports no KV-cache use.
"""

from __future__ import annotations

from gateway.backend import BackendLoad
from gateway.prometheus_text import parse_samples, total

_QUEUE = "tgi_queue_size"
_BATCH = "tgi_batch_current_size"


def parse_load(text: str) -> BackendLoad:
    """The queue and batch gauges out of a Prometheus text page (None where absent)."""
    samples = parse_samples(text, (_QUEUE, _BATCH))
    return BackendLoad(running=total(samples, _BATCH), waiting=total(samples, _QUEUE))
