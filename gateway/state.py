"""Everything a running gateway holds: backends, routes, health, metrics, the upstream client.

Built from a validated config and a backend registry, so tests can build one with fake
backends and no HTTP server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from gateway.api.request_record import RequestRecord
from gateway.auth.keys import KeyRing
from gateway.backend import Backend, BackendContext
from gateway.cache.service import ResponseCache
from gateway.config import GatewayConfig
from gateway.experiments.service import ExperimentService
from gateway.observability import Metrics
from gateway.plugins import BackendRegistry
from gateway.routing.dispatcher import Dispatcher
from gateway.routing.health import HealthMonitor, HealthState
from gateway.routing.load_monitor import LoadMonitor
from gateway.routing.policies import make_policy
from gateway.routing.shared import RoutingState, make_routing_state
from gateway.routing.table import Route, RouteTable
from gateway.speculative.metrics import SpeculativeMetrics
from gateway.speculative.service import SpeculativeService
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
    ) -> None:
        self.config = config
        self.auth = KeyRing(config.auth)
        self.upstream = upstream or make_upstream_client(config.server.upstream_client)
        context = BackendContext(upstream=self.upstream, config_dir=str(config_dir))
        self.backends: dict[str, Backend] = {}
        for backend_config in config.backends:
            factory = registry.types[backend_config.plugin]
            self.backends[backend_config.name] = factory(backend_config, context)
        self.routes = RouteTable([
            Route(
                model=r.model,
                backends=tuple(self.backends[name] for name in r.backends),
                policy=make_policy(r.policy, r, config.routing.stats),
                config=r,
            )
            for r in config.routes
        ])
        self.metrics = Metrics()
        self.health = HealthState()
        self.routing = routing or make_routing_state(config, on_shared_change=self.metrics.set_shared_state)
        self.dispatcher = Dispatcher(
            self.health, self.routing, config.routing.stats, on_attempt_failed=self.metrics.observe_attempt_failure
        )
        self.monitor = HealthMonitor(
            list(self.backends.values()), self.health, config.server.health_interval_s,
            on_change=self.metrics.set_backend_health,
        )
        self.cache = ResponseCache(config.cache, config.redis.url if config.redis is not None else None)
        self.experiments = ExperimentService(config, self.routes, self.backends)
        self.speculative_metrics = SpeculativeMetrics(self.metrics.registry)
        self.speculative = SpeculativeService(
            config, self.backends, target_waiting=lambda name: self.routing.stats.get(name).queued,
            on_request=self.speculative_metrics.observe, interval_s=config.server.health_interval_s,
        )
        self.metrics.before_render = self._export_live_gauges
        # What books each finished OpenAI request (metrics, access log, limits), in order.
        self.request_sinks: list[Callable[[RequestRecord], None]] = []
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
        self.metrics.export_cache(self.cache.stats(), self.cache.books.results)

    async def startup(self) -> None:
        """Start every backend (launching managed servers in parallel), then check health once."""
        names = list(self.backends)
        results = await asyncio.gather(*(self.backends[n].start() for n in names), return_exceptions=True)
        failures = [(n, r) for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)]
        if failures:
            await self.shutdown()
            detail = "; ".join(f"{n}: {r}" for n, r in failures)
            raise RuntimeError(f"backend start-up failed: {detail}")
        await self.routing.start()
        log.info("routing state: %s", self.routing.describe())
        log.info("response cache: %s", self.cache.store.describe())
        await self.experiments.start()
        log.info("experiments: %s", self.experiments.describe())
        await self.monitor.check_once()
        await self.speculative.start()
        for name, healthy in self.health.snapshot().items():
            log.info("backend %s (%s) %s", name, self.backends[name].plugin, "healthy" if healthy else "UNHEALTHY")
        self.monitor.start()
        self.load_monitor.start()

    async def shutdown(self) -> None:
        """Stop health checks, stop backends (and their managed servers), close connections."""
        await self.monitor.stop()
        await self.load_monitor.stop()
        await self.routing.aclose()
        await self.cache.aclose()
        await self.experiments.aclose()
        await self.speculative.aclose()
        await asyncio.gather(*(b.aclose() for b in self.backends.values()), return_exceptions=True)
        await self.upstream.aclose()
