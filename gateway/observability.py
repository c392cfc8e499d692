"""Prometheus metrics and logging set-up (the gen_ai_* series: genai_metrics.py; the access log: access_log.py).

Label children are cached per label tuple: `labels()` hashes and locks on every call, and
the hot path should pay that once per (route, backend, status), not once per request.
"""

from __future__ import annotations

import logging
import logging.config
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from gateway.api.request_record import RequestRecord

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The gateway's metrics, in a registry of their own (so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests", "Requests answered, by route, backend and HTTP status",
            ("route", "backend", "status"), registry=self.registry,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds", "Time from request to the last byte sent",
            ("route", "backend"), buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds", "Streams: time from request to the first event sent",
            ("route", "backend"), buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.stream_errors = Counter(
            "gateway_stream_errors", "Streams that failed after their first byte",
            ("route", "backend"), registry=self.registry,
        )
        self.backend_up = Gauge(
            "gateway_backend_healthy", "1 when the backend passes its health check",
            ("backend",), registry=self.registry,
        )
        self.attempt_failures = Counter(
            "gateway_backend_attempt_failures", "Attempts that failed before their first byte (then retried or "
            "fallen back), by outcome: refused, throttled, http_<status>",
            ("backend", "outcome"), registry=self.registry,
        )
        self.decisions = Counter(
            "gateway_route_decisions", "Backends chosen, by route, backend and the policy that chose",
            ("route", "backend", "policy"), registry=self.registry,
        )
        self.cost = Counter(
            "gateway_cost_usd", "Cost of answered requests in US dollars, by route, backend and tenant",
            ("route", "backend", "tenant"), registry=self.registry,
        )
        self.resumes = Counter(
            "gateway_stream_resumes", "Streams that failed mid-way and were continued on another backend, "
            "by outcome (resumed, failed)", ("route", "outcome"), registry=self.registry,
        )
        self.breaker_state = Gauge(
            "gateway_backend_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
            ("backend",), registry=self.registry,
        )
        self.in_flight = Gauge(
            "gateway_backend_in_flight", "Requests open on the backend (all replicas when state is shared)",
            ("backend",), registry=self.registry,
        )
        self.open_requests = 0  # OpenAI requests this process is serving now (kept across config reloads)
        self.in_flight_requests = Gauge(
            "gateway_in_flight_requests", "OpenAI requests this gateway process is serving now, streams included "
            "(what an autoscaler scales on)", registry=self.registry,
        )
        self.shared_state_up = Gauge(
            "gateway_shared_state_up", "1 while the shared routing state (Redis) is reachable; 0 while "
            "routing runs on this replica's local state", registry=self.registry,
        )
        self.cache_results = Counter(
            "gateway_cache_requests", "Requests by what the response cache did: hit (answered from the store), "
            "miss (went to a backend, answer recorded), coalesced (followed an identical request in flight), "
            "bypass (not cacheable)", ("route", "result"), registry=self.registry,
        )
        self.cache_bytes = Counter(
            "gateway_cache_bytes", "Bytes of stored answers, by direction: read (hits) and written",
            ("direction",), registry=self.registry,
        )
        self.cache_writes = Counter(
            "gateway_cache_writes", "Complete answers offered to the cache, by outcome: stored, not_stored "
            "(error, truncated, finish_reason length, too large) or failed (the store did not take it)",
            ("outcome",), registry=self.registry,
        )
        self.cache_errors = Counter(
            "gateway_cache_store_errors", "Store calls that failed or ran over their time budget, and calls "
            "skipped while the store was unreachable", ("kind",), registry=self.registry,
        )
        self.cache_up = Gauge(
            "gateway_cache_store_up", "1 while the response cache's store answers; 0 while requests skip it",
            registry=self.registry,
        )
        self._cache_seen: dict[tuple[object, ...], float] = {}
        # Gauges that mirror live state are set just before each scrape, not on the hot path.
        self.before_render: Callable[[], None] | None = None
        # `gateway serve --workers N`: every worker's numbers merged (gateway/ops/worker_metrics.py).
        self.combine: Callable[[], bytes] | None = None
        self._children: dict[tuple[object, ...], object] = {}

    def _child(self, metric: Counter | Histogram | Gauge, *labels: str) -> object:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*labels)
            self._children[key] = child
        return child

    def observe_request(self, record: RequestRecord) -> None:
        """A finished OpenAI request's count and latency (a `GatewayState.request_sinks` entry)."""
        route, backend = record.route, record.backend
        self._child(self.requests, route, backend, str(record.status)).inc()  # type: ignore[attr-defined]
        if backend:
            self._child(self.duration, route, backend).observe(record.duration_s)  # type: ignore[attr-defined]

    def observe_ttft(self, route: str, backend: str, seconds: float) -> None:
        self._child(self.ttft, route, backend).observe(seconds)  # type: ignore[attr-defined]

    def observe_stream_error(self, route: str, backend: str) -> None:
        self._child(self.stream_errors, route, backend).inc()  # type: ignore[attr-defined]

    def set_backend_health(self, backend: str, healthy: bool) -> None:
        self.backend_up.labels(backend).set(1 if healthy else 0)

    def observe_attempt_failure(self, backend: str, outcome: str) -> None:
        self._child(self.attempt_failures, backend, outcome).inc()  # type: ignore[attr-defined]

    def observe_decision(self, route: str, backend: str, policy: str) -> None:
        self._child(self.decisions, route, backend, policy).inc()  # type: ignore[attr-defined]

    def observe_cost(self, route: str, backend: str, tenant: str, usd: float) -> None:
        if usd > 0.0:
            self._child(self.cost, route, backend, tenant).inc(usd)  # type: ignore[attr-defined]

    def observe_resume(self, route: str, outcome: str) -> None:
        self._child(self.resumes, route, outcome).inc()  # type: ignore[attr-defined]

    def set_shared_state(self, up: bool) -> None:
        self.shared_state_up.set(1 if up else 0)

    def export_cache(self, stats: dict[str, object], results: dict[tuple[str, str], int]) -> None:
        """Bring the cache's own counters (kept off the hot path) into the metrics, at scrape time."""
        self.cache_up.set(1 if stats.get("available") else 0)
        for (route, result), count in results.items():
            self._catch_up(self.cache_results, (route, result), count)
        not_stored = stats.get("not_stored")
        totals = {
            (self.cache_bytes, "read"): stats.get("served_bytes", 0),
            (self.cache_bytes, "written"): stats.get("stored_bytes", 0),
            (self.cache_writes, "stored"): stats.get("stored", 0),
            (self.cache_writes, "not_stored"): sum(not_stored.values()) if isinstance(not_stored, dict) else 0,
            (self.cache_writes, "failed"): stats.get("write_failures", 0),
            (self.cache_errors, "failed"): stats.get("errors", 0),
            (self.cache_errors, "skipped_while_down"): stats.get("skipped_while_down", 0),
        }
        for (counter, label), total in totals.items():
            self._catch_up(counter, (label,), float(total) if isinstance(total, int | float) else 0.0)

    def _catch_up(self, counter: Counter, labels: tuple[str, ...], total: float) -> None:
        """Advance a Prometheus counter to a running total kept elsewhere."""
        key = (counter, *labels)
        delta = total - self._cache_seen.get(key, 0.0)
        if delta > 0:
            counter.labels(*labels).inc(delta)
            self._cache_seen[key] = total

    def render(self) -> bytes:
        """The exposition a scrape gets: this process's, or every worker's merged (`combine`)."""
        if self.combine is not None:
            return self.combine()
        return self.render_own()

    def render_own(self) -> bytes:
        if self.before_render is not None:
            self.before_render()
        return generate_latest(self.registry)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log record: time (ISO 8601 UTC), level, logger, message, and the traceback."""

    _encode = msgspec.json.Encoder().encode

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self._encode(entry).decode()


def configure_logging(level: str = "info", log_format: str = "text") -> None:
    """Logs on stderr: one line per event (`text`), or one JSON object per line (`json`, for a log
    shipper). Calling it again replaces the set-up (the config's format is known only once it is read)."""
    if log_format == "json":
        logging.config.dictConfig(json_log_config(level))
        return
    logging.basicConfig(level=level.upper(), stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO: on the data path that is a log line per request.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def json_log_config(level: str = "info") -> dict[str, Any]:
    """The JSON set-up as a `logging.config.dictConfig` dict, for servers that set logging up in each
    worker process themselves (uvicorn's `log_config`, granian's `log_dictconfig`): their own loggers
    then hand their records to the root's JSON handler instead of writing text of their own."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "gateway.observability.JsonLogFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            **{name: {"handlers": [], "propagate": True}
               for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "_granian", "granian.access")},
            "httpx": {"level": "WARNING"},
        },
    }
