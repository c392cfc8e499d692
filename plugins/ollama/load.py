"""The load signal of an Ollama backend: `/api/ps` plus the requests this gateway has open.

Ollama publishes no request counts: `/api/ps` (server/routes.go PsHandler) lists the models
loaded in memory, each with its size, the part of it in VRAM, its context length and when
it will be unloaded. So:

- `running`: requests this backend has open with the server now (the gateway's own count;
  other clients of the same server are not seen). With `num_parallel` configured, at most
  that many, since Ollama runs OLLAMA_NUM_PARALLEL requests per model at once...
- `waiting`: ...and the rest wait in Ollama's queue. None without `num_parallel`.
- `capacity`: `num_parallel` when configured, else None.
- `kv_cache_usage`: None; Ollama does not report it.

The `/api/ps` facts come as extra fields: whether the backend's model is loaded (if not, the
next request pays the load time), how many models are resident, its context length, the
fraction of it in VRAM (below 1 it runs partly on CPU, slower) and when it expires.
"""

from __future__ import annotations

import msgspec

from gateway.backend import BackendLoad
from plugins.ollama.wire import RunningModels, canonical_model

_decode_ps = msgspec.json.Decoder(RunningModels).decode


class OllamaLoad(BackendLoad, kw_only=True):
    """BackendLoad plus what `/api/ps` says about the backend's model."""

    model_loaded: bool = False
    loaded_models: int = 0
    context_length: int | None = None
    vram_fraction: float | None = None
    expires_at: str | None = None


def parse_ps(body: bytes, model: str, in_flight: int, num_parallel: int | None) -> OllamaLoad:
    """The load of `model`'s backend from a `/api/ps` body and the gateway's in-flight count."""
    running = _decode_ps(body).models
    wanted = canonical_model(model)
    mine = next((m for m in running if canonical_model(m.model or m.name) == wanted), None)
    load = OllamaLoad(
        running=float(min(in_flight, num_parallel) if num_parallel else in_flight),
        waiting=float(max(in_flight - num_parallel, 0)) if num_parallel else None,
        capacity=float(num_parallel) if num_parallel else None,
        model_loaded=mine is not None,
        loaded_models=len(running),
    )
    if mine is not None:
        load.context_length = mine.context_length or None
        load.vram_fraction = mine.size_vram / mine.size if mine.size else None
        load.expires_at = mine.expires_at or None
    return load
