"""Prometheus metrics named after the OpenTelemetry GenAI semantic conventions, booked per finished request.

- `gen_ai.server.request.duration` as `gen_ai_server_request_duration_seconds`: every request,
  with `error_type` (the HTTP status) on a 4xx/5xx;
- `gen_ai.server.time_to_first_token` as `gen_ai_server_time_to_first_token_seconds`: successful streams;
- `gen_ai.server.time_per_output_token` as `gen_ai_server_time_per_output_token_seconds`: successful
  streams of more than one token, (duration - TTFT) / (output tokens - 1);
- `gen_ai.client.token.usage` as `gen_ai_client_token_usage{gen_ai_token_type=input|output}`:
  successful answers a backend made.

Dots become underscores and the unit `s` becomes the suffix `_seconds`, as OpenTelemetry's Prometheus
exporter writes them (`{token}` is an annotation, not a unit: no suffix). Bucket boundaries are the
ones the conventions recommend. Label values are bounded by the config, never by what clients send:
`gen_ai_request_model` is the route the request matched (its configured name; a glob route's pattern),
`gen_ai_response_model` the backend's configured model, `gen_ai_provider_name` the backend's plugin.

The token histogram counts what the gateway consumed from its backends (it is the backends' client):
answers from the response cache cost no backend tokens and are left out of it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily

from gateway.api.request_record import RequestRecord
from gateway.backend import Backend

# The conventions' recommended boundaries (ExplicitBucketBoundaries), in their units.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)

OPERATIONS = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}
# The `backend` of a request the cache answered, and the provider named for requests no backend
# answered (refused by the gateway itself: auth, validation, unknown model, no backend available).
CACHE_BACKEND = "cache"
GATEWAY_PROVIDER = "gateway"

_MODEL = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model",
          "server_address", "server_port", "gateway_backend")


class LoopHistogram:
    """A Prometheus histogram observed and collected on the event loop only, so without locks.

    prometheus_client's Histogram takes a lock per bucket and per sum (about 1.5 µs an observation);
    a request books up to five observations here, at about a tenth of that each.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], buckets: tuple[float, ...],
                 unit: str = "") -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.bounds = buckets
        self.unit = unit
        # Per label tuple: a count per bucket, then the +Inf bucket's, then the sum.
        self.series: dict[tuple[str, ...], list[float]] = {}

    def child(self, labels: tuple[str, ...]) -> list[float]:
        """The counts of one label tuple; callers keep it and pass it to `observe`."""
        counts = self.series.get(labels)
        if counts is None:
            counts = self.series[labels] = [0.0] * (len(self.bounds) + 2)
        return counts

    def observe(self, counts: list[float], value: float) -> None:
        counts[bisect_left(self.bounds, value)] += 1
        counts[-1] += value

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames, unit=self.unit)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield self._family()  # lets the registry refuse a second collector with the same name

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = self._family()
        for labels, counts in self.series.items():
            cumulative, buckets = 0.0, []
            for bound, count in zip(self.bounds, counts, strict=False):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            buckets.append(("+Inf", cumulative + counts[-2]))
            family.add_metric(list(labels), buckets, counts[-1])
        yield family


def _le(bound: float) -> str:
    return repr(float(bound))


class GenAIMetrics:
    """The gen_ai_* series, registered once per process (a config reload keeps them counting)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = LoopHistogram(
            "gen_ai_server_request_duration_seconds",
            "GenAI server request duration: from the request's arrival to its last byte (OTel "
            "gen_ai.server.request.duration)", (*_MODEL, "error_type"), DURATION_BUCKETS, "seconds")
        self.ttft = LoopHistogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Streams answered successfully: time from the request's arrival to its first content token sent "
            "(OTel gen_ai.server.time_to_first_token)", _MODEL, TTFT_BUCKETS, "seconds")
        self.tpot = LoopHistogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Streams answered successfully: time per output token after the first (OTel "
            "gen_ai.server.time_per_output_token)", _MODEL, TPOT_BUCKETS, "seconds")
        self.tokens = LoopHistogram(
            "gen_ai_client_token_usage",
            "Tokens per request the gateway's backends consumed, by gen_ai_token_type input or output; cache "
            "hits are not counted (OTel gen_ai.client.token.usage)", (*_MODEL, "gen_ai_token_type"), TOKEN_BUCKETS)
        for histogram in (self.duration, self.ttft, self.tpot, self.tokens):
            registry.register(histogram)  # type: ignore[arg-type]

    def sink(self, backends: Mapping[str, Backend]) -> GenAISink:
        """The request sink of one gateway state, describing its backends."""
        return GenAISink(self, backends)


class _Children:
    """One (operation, route, backend)'s series, each made on its first observation (so a route that
    never streams shows no time-to-first-token series) and kept."""

    __slots__ = ("errors", "input", "labels", "metrics", "ok", "output", "tpot", "ttft")

    def __init__(self, metrics: GenAIMetrics, labels: tuple[str, ...]) -> None:
        self.metrics = metrics
        self.labels = labels
        self.ok: list[float] | None = None
        self.ttft: list[float] | None = None
        self.tpot: list[float] | None = None
        self.input: list[float] | None = None
        self.output: list[float] | None = None
        self.errors: dict[int | str, list[float]] = {}

    def ready(self, slot: str, histogram: LoopHistogram, labels: tuple[str, ...]) -> list[float]:
        """Make the series of `slot` (ok, ttft, tpot, input, output) on its first observation."""
        series = histogram.child(labels)
        setattr(self, slot, series)
        return series

    def error(self, status: int | str) -> list[float]:
        series = self.errors.get(status)
        if series is None:
            series = self.errors[status] = self.metrics.duration.child((*self.labels, str(status)))
        return series


class GenAISink:
    """Books a finished request's GenAI metrics; `state.request_sinks` calls it once per request."""

    def __init__(self, metrics: GenAIMetrics, backends: Mapping[str, Backend]) -> None:
        self.metrics = metrics
        self.backends = backends
        self._children: dict[tuple[str, str, str], _Children] = {}

    def _labels(self, operation: str, route: str, backend_name: str) -> tuple[str, ...]:
        backend = self.backends.get(backend_name)
        if backend is None:
            # The cache, or no backend at all; a backend a reload removed keeps its name only.
            provider = CACHE_BACKEND if backend_name == CACHE_BACKEND else GATEWAY_PROVIDER if not backend_name else ""
            return (operation, provider, route, "", "", "", backend_name)
        config = backend.config
        address = port = ""
        if config.url:
            parts = urlsplit(config.url)
            address = parts.hostname or ""
            port = str(parts.port or (443 if parts.scheme == "https" else 80))
        return (operation, backend.plugin, route, config.model, address, port, backend_name)

    def __call__(self, record: RequestRecord) -> None:
        key = (OPERATIONS[record.kind], record.route, record.backend)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = _Children(self.metrics, self._labels(*key))
        metrics = self.metrics
        duration = record.duration_s
        if record.status >= 400 or record.error:
            # error_type: the status the client got (499: it went away first), or for a stream cut after
            # its first byte (status 200, already sent) the code of the error event that ended it.
            series = c.error(record.status if record.status >= 400 else record.error)
            series[bisect_left(DURATION_BUCKETS, duration)] += 1
            series[-1] += duration
            return
        labels = c.labels
        # The observations are inlined (bucket, then sum): this runs once per request.
        series = c.ok or c.ready("ok", metrics.duration, (*labels, ""))
        series[bisect_left(DURATION_BUCKETS, duration)] += 1
        series[-1] += duration
        ttft = record.ttft_s
        if record.stream and ttft is not None:
            metrics.ttft.observe(c.ttft or c.ready("ttft", metrics.ttft, labels), ttft)
            if record.output_tokens > 1:
                metrics.tpot.observe(c.tpot or c.ready("tpot", metrics.tpot, labels),
                                     (duration - ttft) / (record.output_tokens - 1))
        if record.backend and record.backend != CACHE_BACKEND:
            tokens = record.input_tokens
            series = c.input or c.ready("input", metrics.tokens, (*labels, "input"))
            series[bisect_left(TOKEN_BUCKETS, tokens)] += 1
            series[-1] += tokens
            if record.kind != "embedding":
                tokens = record.output_tokens
                series = c.output or c.ready("output", metrics.tokens, (*labels, "output"))
                series[bisect_left(TOKEN_BUCKETS, tokens)] += 1
                series[-1] += tokens
