"""Everything a running gateway holds: backends, routes, health, metrics, the upstream client.

Built from a validated config and a backend registry, so tests can build one with fake
backends and no HTTP server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from gateway.access_log import AccessLog
from gateway.api.request_record import RequestRecord
from gateway.auth.key_sync import KeySync
from gateway.auth.keys import KeyRing
from gateway.backend import Backend, BackendContext
from gateway.cache.service import ResponseCache
from gateway.config import GatewayConfig
from gateway.experiments.service import ExperimentService
from gateway.genai_metrics import GenAIMetrics
from gateway.limits.service import Limits
from gateway.observability import Metrics
from gateway.plugins import BackendRegistry
from gateway.routing.admission import AdmissionMetrics
from gateway.routing.dispatcher import Dispatcher
from gateway.routing.health import HealthMonitor, HealthState
from gateway.routing.load_monitor import LoadMonitor
from gateway.routing.policies import make_policy
from gateway.routing.shared import RoutingState, make_routing_state
from gateway.routing.table import Route, RouteTable
from gateway.speculative.metrics import SpeculativeMetrics
from gateway.speculative.service import SpeculativeService
from gateway.tracing import RequestTracer, make_tracer
from gateway.upstream import UpstreamClient, make_upstream_client

log = logging.getLogger("gateway")


class GatewayState:
    """The live objects behind one gateway process."""

    def __init__(
        self,
        config: GatewayConfig,
        registry: BackendRegistry,
        *,
        config_dir: str | Path = ".",
        upstream: UpstreamClient | None = None,
        routing: RoutingState | None = None,
        previous: GatewayState | None = None,
    ) -> None:
        """`previous`: the state this one replaces on a config reload. What the new config leaves
        unchanged is taken over rather than rebuilt (see `carried`): a backend with the same config
        (its managed server keeps running), the upstream client, the routing state, the response
        cache, experiment numbers kept in the process, and always the metrics (counters must not
        restart at zero) and the per-backend concurrency counts (limits hold across the swap)."""
        self.config = config
        self.open_requests = 0  # OpenAI requests being served from this state (a reload waits for them)
        self.carried: set[str] = set()  # what was taken over from `previous`: "upstream", "routing", ...
        self.auth = KeyRing(config.auth)
        self.key_sync = (KeySync(self.auth, config.auth, config.redis)
                         if config.auth is not None and config.auth.store == "redis" and config.redis is not None
                         else None)
        reuse = _Reuse(config, previous)
        if upstream is None and reuse.upstream is not None:
            upstream = reuse.upstream
            self.carried.add("upstream")
        self.upstream = upstream or make_upstream_client(config.server.upstream_client)
        # Traces (optional, gateway/tracing.py), one tracer across a reload that leaves the section alone;
        # while on, requests to backends carry their attempt's traceparent.
        self.tracer: RequestTracer | None = make_tracer(config.tracing) if previous is None or \
            previous.config.tracing != config.tracing else previous.tracer
        if previous is not None and self.tracer is previous.tracer:
            self.carried.add("tracer")
        if self.tracer is not None:
            self.upstream = self.tracer.propagating(self.upstream)
        context = BackendContext(upstream=self.upstream, config_dir=str(config_dir))
        self.backends: dict[str, Backend] = {}
        self.carried_backends: set[str] = set()
        for backend_config in config.backends:
            kept = reuse.backend(backend_config.name)
            if kept is not None:
                self.backends[backend_config.name] = kept
                self.carried_backends.add(backend_config.name)
                continue
            factory = registry.types[backend_config.plugin]
            self.backends[backend_config.name] = factory(backend_config, context)
        if self.tracer is not None and previous is not None and previous.tracer is None and self.carried_backends:
            log.warning("tracing turned on by a reload: backends kept from the previous config (%s) do not send "
                        "traceparent until they are rebuilt (a change to their settings, or a restart)",
                        ", ".join(sorted(self.carried_backends)))
        self.routes = RouteTable([
            Route(
                model=r.model,
                backends=tuple(self.backends[name] for name in r.backends),
                policy=make_policy(r.policy, r, config.routing.stats),
                config=r,
            )
            for r in config.routes
        ])
        self.metrics = previous.metrics if previous is not None else Metrics()
        self.health = HealthState()
        if routing is None and reuse.routing is not None:
            routing = reuse.routing
            self.carried.add("routing")
        self.routing = routing or make_routing_state(config, on_shared_change=self.metrics.set_shared_state)
        # Concurrency counts are per backend name and outlive a reload: requests still running on the old
        # config hold their slots against the new limits, and waiters of both queue in one line.
        self.dispatcher = Dispatcher(
            self.health, self.routing, config.routing.stats, on_attempt_failed=self.metrics.observe_attempt_failure,
            slots=previous.dispatcher.slots if previous is not None else None,
        )
        self.monitor = HealthMonitor(
            list(self.backends.values()), self.health, config.server.health_interval_s,
            on_change=self.metrics.set_backend_health,
        )
        if reuse.cache is not None:
            self.cache = reuse.cache
            self.carried.add("cache")
        else:
            self.cache = ResponseCache(config.cache, config.redis)
        self.experiments = ExperimentService(config, self.routes, self.backends,
                                             previous=previous.experiments if previous is not None else None)
        self.speculative_metrics = (previous.speculative_metrics if previous is not None
                                    else SpeculativeMetrics(self.metrics.registry))
        self.speculative = SpeculativeService(
            config, self.backends, target_waiting=lambda name: self.routing.stats.get(name).queued,
            on_request=self.speculative_metrics.observe, interval_s=config.server.health_interval_s,
        )
        self.metrics.before_render = self._export_live_gauges
        # What books each finished OpenAI request (metrics, access log, limits), in order.
        self.request_sinks: list[Callable[[RequestRecord], None]] = [self.metrics.observe_request]
        self.genai_metrics = previous.genai_metrics if previous is not None else GenAIMetrics(self.metrics.registry)
        self.request_sinks.append(self.genai_metrics.sink(self.backends))
        # One JSON line per request (gateway/access_log.py); one writer across a reload that keeps the section.
        self.access_log = AccessLog.from_config(config.logging) if previous is None or \
            previous.config.logging != config.logging else previous.access_log
        if previous is not None and self.access_log is previous.access_log:
            self.carried.add("access_log")
        if self.access_log is not None:
            self.request_sinks.append(self.access_log)
        self.dispatcher.tracer = self.tracer
        # Per-key rates and budgets (gateway/limits/): admitted in the handler, charged by their sink.
        self.limits: Limits = Limits(config.auth, config.redis, registry=self.metrics.registry,
                                     previous=previous.limits if previous is not None else None)
        if self.limits.enabled:
            self.request_sinks.append(self.limits.charge)
        AdmissionMetrics.watch(self.metrics.registry, self.dispatcher.slots)
        self.load_monitor = LoadMonitor(
            list(self.backends.values()), self.routing.stats, config.routing.stats.load_interval_s
        )

    def finish_request(self, record: RequestRecord) -> None:
        """Book one finished request with every sink; a failing sink is logged, never the request's problem."""
        for sink in self.request_sinks:
            try:
                sink(record)
            except Exception:
                log.exception("booking request %s failed in %r", record.request_id.decode(), sink)

    def _export_live_gauges(self) -> None:
        """Breaker states and in-flight counts, read from the routing state at scrape time."""
        codes = {"closed": 0, "half_open": 1, "open": 2}
        for name in self.backends:
            self.metrics.breaker_state.labels(name).set(codes[self.routing.breakers.snapshot(name).state])
            self.metrics.in_flight.labels(name).set(self.routing.stats.get(name).in_flight)
        self.metrics.set_shared_state(self.routing.shared_ok)
        self.metrics.in_flight_requests.set(self.metrics.open_requests)
        self.metrics.export_cache(self.cache.stats(), self.cache.books.results)

    async def startup(self) -> None:
        """Start every backend (launching managed servers in parallel), then check health once."""
        if self.access_log is not None:
            self.access_log.open()  # an access_path that cannot be written fails the start, not a request
        names = [n for n in self.backends if n not in self.carried_backends]  # carried ones are running
        results = await asyncio.gather(*(self.backends[n].start() for n in names), return_exceptions=True)
        failures = [(n, r) for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)]
        if failures:
            await self.discard()
            detail = "; ".join(f"{n}: {r}" for n, r in failures)
            raise RuntimeError(f"backend start-up failed: {detail}")
        await self.routing.start()
        if self.key_sync is not None:
            await self.key_sync.start()
            log.info("API keys: %d read from Redis beside the config's", self.key_sync.loaded)
        log.info("routing state: %s", self.routing.describe())
        log.info("response cache: %s", self.cache.store.describe())
        await self.limits.start()
        log.info("limits: %s", self.limits.describe())
        await self.experiments.start()
        log.info("experiments: %s", self.experiments.describe())
        await self.monitor.check_once()
        await self.speculative.start()
        for name, healthy in self.health.snapshot().items():
            log.info("backend %s (%s) %s", name, self.backends[name].plugin, "healthy" if healthy else "UNHEALTHY")
        self.monitor.start()
        self.load_monitor.start()

    async def stop_background(self) -> None:
        """Stop the periodic work (health checks, load polls, pair re-probes): a replaced state still
        finishing its requests must not keep checking backends alongside its successor."""
        await self.monitor.stop()
        await self.load_monitor.stop()
        await self.speculative.stop_rechecks()
        if self.key_sync is not None:
            await self.key_sync.stop()

    async def discard(self) -> None:
        """Close a state that never served (its reload failed to start), sparing what it took over."""
        await self.stop_background()
        await self._close(self.carried, self.carried_backends)

    async def shutdown(self, successor: GatewayState | None = None) -> None:
        """Stop health checks, stop backends (and their managed servers), close connections; what
        `successor` took over (a reload) stays open for it."""
        kept = successor.carried if successor is not None else set()
        kept_backends = successor.carried_backends if successor is not None else set()
        await self.stop_background()
        await self._close(kept, kept_backends)

    async def _close(self, kept: set[str], kept_backends: set[str]) -> None:
        if "access_log" not in kept and self.access_log is not None:
            await self.access_log.aclose()
        if "tracer" not in kept and self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # exports what is buffered: may wait on the network
        await self.speculative.aclose()
        if self.key_sync is not None:
            await self.key_sync.aclose()
        if "routing" not in kept:
            await self.routing.aclose()
        if "cache" not in kept:
            await self.cache.aclose()
        await self.limits.aclose()  # its own in either case: only an in-process store is handed over
        await self.experiments.aclose()
        await asyncio.gather(*(b.aclose() for name, b in self.backends.items() if name not in kept_backends),
                             return_exceptions=True)
        if "upstream" not in kept:
            await self.upstream.aclose()


class _Reuse:
    """What a reloaded config can take over from the state it replaces: a part whose settings did not
    change. Backends are kept by name when their whole config (plugin, url, launch, options) is equal."""

    def __init__(self, config: GatewayConfig, previous: GatewayState | None) -> None:
        self.upstream: UpstreamClient | None = None
        self.routing: RoutingState | None = None
        self.cache: ResponseCache | None = None
        self._backends: dict[str, Backend] = {}
        if previous is None:
            return
        old = previous.config
        if old.server.upstream_client == config.server.upstream_client:
            self.upstream = previous.upstream
        same_backends = [b.name for b in old.backends] == [b.name for b in config.backends]
        if same_backends and old.routing == config.routing and old.redis == config.redis:
            self.routing = previous.routing
        if old.cache == config.cache and old.redis == config.redis:
            self.cache = previous.cache
        if self.upstream is not None:  # a backend holds the upstream client it was built with
            olds = {b.name: b for b in old.backends}
            for backend in config.backends:
                if olds.get(backend.name) == backend:
                    self._backends[backend.name] = previous.backends[backend.name]

    def backend(self, name: str) -> Backend | None:
        return self._backends.get(name)
