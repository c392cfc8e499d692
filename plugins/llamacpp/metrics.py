"""Reading llama.cpp's `/metrics` and `/slots` for the load signal the router uses."""

from __future__ import annotations

from typing import Any

from gateway.backend import BackendLoad
from gateway.prometheus_text import parse_samples, total

# llama.cpp names (tools/server: metrics endpoint); older builds used kv_cache_usage_ratio.
_RUNNING = "llamacpp:requests_processing"
_WAITING = "llamacpp:requests_deferred"
_KV = "llamacpp:kv_cache_usage_ratio"


def parse_load(text: str) -> BackendLoad:
    """Pick the gauges the router needs out of a Prometheus text page."""
    samples = parse_samples(text, (_RUNNING, _WAITING, _KV))
    return BackendLoad(
        running=total(samples, _RUNNING), waiting=total(samples, _WAITING), kv_cache_usage=total(samples, _KV)
    )


def parse_slots(slots: list[dict[str, Any]]) -> tuple[int, int, float | None]:
    """(slots, slots processing, KV-cache use 0..1) from `GET /slots`.

    This build's /metrics has no KV gauge, so use is estimated from the slots: the tokens a
    slot holds (its last prompt plus what it decoded) over its context size. Idle slots keep
    their prompt cached, which is what prefix-aware routing wants to know.
    """
    total_ctx = 0
    used = 0
    processing = 0
    for slot in slots:
        total_ctx += int(slot.get("n_ctx") or 0)
        processing += bool(slot.get("is_processing"))
        decoded = sum(int(t.get("n_decoded") or 0) for t in slot.get("next_token") or ())
        used += int(slot.get("n_prompt_tokens") or 0) + decoded
    usage = min(used / total_ctx, 1.0) if total_ctx else None
    return len(slots), processing, usage
