"""The emulator's models: which are pulled (`/api/tags`) and which are loaded (`/api/ps`).

Ollama loads a model on its first request and keeps it for `keep_alive` after the last one
(default 5m; 0 unloads at once, negative keeps it forever; docs/api.md, server/sched.go).
The emulator keeps the same bookkeeping so `/api/ps` and `load_duration` behave like a
real server's: the first request pays a (tiny, fake) load, later ones do not.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

from plugins.ollama.emulator.wire import (
    ListModelResponse,
    ListResponse,
    ModelDetails,
    ProcessModelResponse,
    ProcessResponse,
    go_time,
)

DEFAULT_KEEP_ALIVE_S = 300.0  # api.Duration's default, 5 minutes
_FAKE_SIZE = 2_019_393_189  # llama3.2:latest's size in docs/api.md "List Local Models"
_FAKE_LOAD_NS = 1_234_567  # what a first request reports as load_duration
# expires_at of a model kept forever: Go's time.Now().Add(math.MaxInt64) lands in year 2318.
_FOREVER_NS = time.time_ns() + (2**63 - 1)


def canonical(name: str) -> str:
    """Ollama's short name with its tag: `llama3.2` is `llama3.2:latest` (docs/api.md, Model names)."""
    name = name.strip()
    if name.startswith("registry.ollama.ai/library/"):
        name = name.removeprefix("registry.ollama.ai/library/")
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


@dataclass(slots=True)
class LoadedModel:
    """A model resident in memory, and until when it stays (ns since the epoch)."""

    name: str
    context_length: int
    expires_at_ns: int
    in_use: int = 0  # requests running on it; Ollama never unloads a runner with a positive refCount


@dataclass
class Catalog:
    """Pulled and loaded models of one emulator."""

    pulled: list[str]
    default_num_ctx: int = 4096
    loaded: dict[str, LoadedModel] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pulled = [canonical(n) for n in self.pulled]
        self._modified_ns = time.time_ns()

    def find(self, requested: str) -> str | None:
        """The pulled model a request names, or None."""
        name = canonical(requested) if requested else ""
        return name if name in self.pulled else None

    def use(self, name: str, num_ctx: int | None, keep_alive_s: float) -> int:
        """Load `name` if needed for this request; returns the load duration in ns (0 if resident)."""
        self._expire()
        context = num_ctx or self.default_num_ctx
        model = self.loaded.get(name)
        load_ns = 0
        # A different num_ctx is a different runner: Ollama reloads the model (server/sched.go needsReload).
        if model is None or model.context_length != context:
            model = self.loaded[name] = LoadedModel(name, context, 0)
            load_ns = _FAKE_LOAD_NS
        model.in_use += 1
        model.expires_at_ns = _expiry(keep_alive_s)
        return load_ns

    def release(self, name: str, keep_alive_s: float) -> None:
        """The request finished: the model expires `keep_alive_s` from now (0 unloads it when idle)."""
        model = self.loaded.get(name)
        if model is None:
            return
        model.in_use = max(0, model.in_use - 1)
        model.expires_at_ns = _expiry(keep_alive_s)
        if keep_alive_s <= 0 and model.in_use == 0:
            del self.loaded[name]

    def unload(self, name: str) -> None:
        self.loaded.pop(name, None)

    def _expire(self) -> None:
        now = time.time_ns()
        for name in [n for n, m in self.loaded.items() if m.expires_at_ns <= now and m.in_use == 0]:
            del self.loaded[name]

    def tags(self) -> ListResponse:
        return ListResponse(models=[
            ListModelResponse(name=name, model=name, modified_at=go_time(self._modified_ns), size=_FAKE_SIZE,
                              digest=digest(name), details=details(name))
            for name in self.pulled
        ])

    def ps(self) -> ProcessResponse:
        self._expire()
        models = sorted(self.loaded.values(), key=lambda m: -m.expires_at_ns)  # longest remaining first, as Ollama
        return ProcessResponse(models=[
            ProcessModelResponse(name=m.name, model=m.name, size=_FAKE_SIZE, digest=digest(m.name),
                                 details=details(m.name), expires_at=go_time(m.expires_at_ns),
                                 size_vram=_FAKE_SIZE, context_length=m.context_length)
            for m in models
        ])


def _expiry(keep_alive_s: float) -> int:
    if math.isinf(keep_alive_s):
        return _FOREVER_NS
    return time.time_ns() + int(max(keep_alive_s, 0.0) * 1e9)


def digest(name: str) -> str:
    """A stable sha256 per model, shaped like a real manifest digest."""
    return hashlib.sha256(name.encode()).hexdigest()


def details(name: str) -> ModelDetails:
    """Fixed details in the shape of docs/api.md's examples."""
    embedding = "minilm" in name or "embed" in name
    family = "bert" if embedding else "llama"
    return ModelDetails(parent_model="", format="gguf", family=family, families=[family],
                        parameter_size="23M" if embedding else "3.2B", quantization_level="Q4_K_M")
