"""What one request did, gathered on its way through the handler and booked once at its end.

One `RequestRecord` per OpenAI request. The handler, the cache, the stream relay and the
speculative path fill in what they learn (backend, cache result, tokens, cost, first token);
when the request is over, `GatewayState.finish_request` hands the record to whatever books it:
metrics, the access log, the limiter's token and spend accounting. A plain slotted object:
filling it costs attribute stores, nothing more.
"""

from __future__ import annotations

import time

from gateway.schemas import RequestKind


class RequestRecord:
    """One request's outcome. Times are `time.perf_counter()` values; `cache` is "" when the
    route has no cache, else hit | miss | coalesced | bypass; `error` is the code of the error event
    that ended a stream after its first byte (its status stays 200: the headers had gone out)."""

    __slots__ = ("backend", "cache", "cost_usd", "error", "finished_at", "first_token_at", "input_tokens", "key_name",
                 "kind", "model", "output_tokens", "request_id", "route", "speculative", "started", "status",
                 "stream", "tenant", "wall_start")

    def __init__(self, request_id: bytes, kind: RequestKind, started: float) -> None:
        self.request_id = request_id
        self.kind = kind
        self.started = started
        self.wall_start = time.time()
        self.key_name: str | None = None
        self.tenant = ""
        self.route = ""
        self.model = ""
        self.backend = ""
        self.status = 200
        self.stream = False
        self.cache = ""
        self.error = ""
        self.speculative = False
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.first_token_at: float | None = None
        self.finished_at: float | None = None

    @property
    def duration_s(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.perf_counter()
        return end - self.started

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started
