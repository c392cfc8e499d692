"""Reading TGI's Prometheus page (`GET /metrics`) for the load signal the router uses.

Names from huggingface/text-generation-inference docs/source/reference/metrics.md:
`tgi_queue_size` (requests waiting for the batcher) and `tgi_batch_current_size` (requests
in the running batch). TGI reports no KV-cache use.
"""

from __future__ import annotations

from gateway.backend import BackendLoad

_QUEUE = "tgi_queue_size"
_BATCH = "tgi_batch_current_size"


def parse_load(text: str) -> BackendLoad:
    """The queue and batch gauges out of a Prometheus text page (None where absent)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, rest = line.partition(" ")
        name = name.split("{", 1)[0]
        if name in (_QUEUE, _BATCH):
            try:
                values[name] = values.get(name, 0.0) + float(rest.split()[0])
            except (ValueError, IndexError):
                continue
    return BackendLoad(running=values.get(_BATCH), waiting=values.get(_QUEUE))
