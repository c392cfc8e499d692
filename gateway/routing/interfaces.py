"""The small interfaces routing is built from: live statistics, breakers, policies, request facts.

Policies read statistics and breakers only through these protocols, so a test hands them a
fake clock and an in-process store, and gateway replicas share the same state through Redis
by swapping the implementation (`gateway/routing/shared.py`), never the policy.

Every method a request calls on the hot path is synchronous and works on memory: the Redis
implementation applies updates locally at once and ships them to Redis in the background.
Only a half-open breaker's probe needs an answer from the shared store before proceeding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import msgspec

from gateway.backend import BackendLoad
from gateway.schemas import RequestKind

if TYPE_CHECKING:
    from gateway.backend import Backend

BreakerStateName = Literal["closed", "open", "half_open"]
Admission = Literal["yes", "no", "probe"]


class BackendStats(msgspec.Struct, kw_only=True):
    """What the gateway knows about one backend now. Latencies are time-decayed (peak-)EWMAs in
    seconds; None until the first sample. Counts are decayed with the same half-life."""

    ttft_s: float | None = None  # request sent -> first content token (streams)
    tpot_s: float | None = None  # time per output token after the first
    e2e_s: float | None = None  # request sent -> last byte
    output_tokens: float | None = None  # output tokens per request
    error_rate: float = 0.0  # 0..1, share of recent attempts that failed
    samples: float = 0.0  # decayed count of finished attempts (0: never observed)
    in_flight: int = 0  # requests open now (across replicas when shared)
    recent_requests: float = 0.0  # decayed count of requests started
    output_tokens_per_s: float | None = None  # the backend's measured output throughput, all requests together
    # The engine's own load signal (its plugin's `load()`, polled), less this gateway's requests
    # in flight at the time, which `in_flight` counts already: other clients' work.
    queued: float | None = None
    running: float | None = None
    capacity: float | None = None
    kv_cache_usage: float | None = None


class RoutingStats(Protocol):
    """Live per-backend statistics. Writers are called by the dispatcher; policies only `get`."""

    def get(self, backend: str) -> BackendStats: ...

    def started(self, backend: str) -> None:
        """A request was sent to `backend` (in-flight + 1)."""
        ...

    def first_token(self, backend: str, ttft_s: float) -> None:
        """A stream's first content token arrived `ttft_s` after the request was sent."""
        ...

    def finished(
        self, backend: str, *, ok: bool | None, e2e_s: float, ttft_s: float | None, output_tokens: int | None
    ) -> None:
        """The request ended (in-flight - 1); `ok=False` counts an error; `ok=None` is no sample
        at all (a 4xx that is the client's fault, a client that hung up): only in-flight drops.
        `ttft_s` is None for non-streaming requests, whose first token cannot be seen."""
        ...

    def observe_load(self, backend: str, load: BackendLoad) -> None:
        """The engine's own load signal, read periodically from its plugin."""
        ...


class BreakerSnapshot(msgspec.Struct, kw_only=True):
    """One backend's circuit breaker as policies, admin and metrics see it."""

    state: BreakerStateName = "closed"
    failures: int = 0  # consecutive failed attempts
    open_until: float = 0.0  # clock time the open state ends (then half-open)
    open_s: float = 0.0  # length of the current (or last) open window
    probing: bool = False  # a half-open probe is out now


class Breakers(Protocol):
    """Circuit breakers for every backend."""

    def snapshot(self, backend: str) -> BreakerSnapshot: ...

    def admission(self, backend: str) -> Admission:
        """`yes` when closed, `no` while open (or a probe is already out), `probe` when a
        half-open breaker would let this request through as its probe."""
        ...

    async def acquire_probe(self, backend: str) -> bool:
        """Claim the single half-open probe (atomically, across replicas when shared)."""
        ...

    def record(self, backend: str, *, ok: bool, hard: bool = False) -> None:
        """An attempt's outcome. `hard` failures (connection refused) open the breaker at once."""
        ...

    def release_probe(self, backend: str) -> None:
        """Give back a claimed probe whose request ended without an outcome (the client hung up),
        so the next request can probe instead of waiting out the claim's lease."""
        ...


class RequestFeatures:
    """Facts about one request that policies use, computed only when first asked for."""

    __slots__ = ("_input_tokens", "body", "kind", "tenant")

    def __init__(self, kind: RequestKind, body: dict[str, Any], tenant: str = "") -> None:
        self.kind = kind
        self.body = body
        self.tenant = tenant
        self._input_tokens: int | None = None

    @property
    def max_output_tokens(self) -> int | None:
        body = self.body
        value = body.get("max_completion_tokens") or body.get("max_tokens")
        return value if isinstance(value, int) and value > 0 else None

    @property
    def input_tokens(self) -> int:
        """An estimate (about four bytes a token): enough to price and size a request."""
        if self._input_tokens is None:
            self._input_tokens = max(1, _text_bytes(self.body.get("messages") or self.body.get("prompt")
                                                    or self.body.get("input")) // 4)
        return self._input_tokens


def _text_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(_text_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_text_bytes(v) for k, v in value.items() if k in ("content", "text"))
    return 0


class RouteChoice(NamedTuple):
    """A candidate in the order to try, with why it is there (`x-gateway-route-reason`)."""

    backend: Backend
    reason: str


class Policy(Protocol):
    """Orders a route's available candidates for one request: the first is the pick, the rest
    are fallbacks. Candidates are already healthy, breaker-admitted and under their limit."""

    name: str

    def rank(
        self, candidates: Sequence[Backend], request: RequestFeatures, stats: RoutingStats
    ) -> list[RouteChoice]: ...
