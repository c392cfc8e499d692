"""Reading llama.cpp's Prometheus text for the load signal the router uses."""

from __future__ import annotations

from gateway.backend import BackendLoad

# llama.cpp names (tools/server: metrics endpoint); older builds used kv_cache_usage_ratio.
_RUNNING = "llamacpp:requests_processing"
_WAITING = "llamacpp:requests_deferred"
_KV = "llamacpp:kv_cache_usage_ratio"


def parse_load(text: str) -> BackendLoad:
    """Pick the gauges the router needs out of a Prometheus text page."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, rest = line.partition(" ")
        name = name.split("{", 1)[0]
        if name in (_RUNNING, _WAITING, _KV):
            try:
                values[name] = float(rest.split()[0])
            except (ValueError, IndexError):
                continue
    return BackendLoad(running=values.get(_RUNNING), waiting=values.get(_WAITING), kv_cache_usage=values.get(_KV))
