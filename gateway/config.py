"""Typed configuration loaded from YAML.

Loading validates everything it can and reports *every* problem with its key path
(`backends[1].url: not a URL`), not just the first, so `gateway check-config` can print a
full list. Types and unknown keys are checked by msgspec per item; references between
items (a route naming a backend) and plugin-specific checks are done afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import msgspec
import yaml

from gateway.auth.settings import AuthConfig, auth_problems
from gateway.cache.settings import CacheConfig, RouteCacheConfig, cache_problems, route_cache_problems
from gateway.config_env import interpolate_env
from gateway.config_structs import convert_section
from gateway.experiments.settings import (
    ExperimentConfig,
    ExperimentsConfig,
    ShadowConfig,
    experiment_problems,
    experiments_problems,
)
from gateway.observability_settings import LoggingConfig, TracingConfig, logging_problems, tracing_problems
from gateway.redis_settings import RedisConfig, redis_problems
from gateway.speculative.settings import SpeculativeConfig, speculative_problems

PolicyName = Literal[
    "first_healthy", "round_robin", "weighted", "least_loaded", "latency", "cost", "prefix_affinity"
]
POLICY_NAMES: tuple[str, ...] = get_args(PolicyName)
UpstreamClientName = Literal["aiohttp", "httpx"]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for config sections: an unknown key is an error, not silently ignored."""


class ServerConfig(_Strict):
    """Where the gateway listens and how it treats requests."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 4 * 1024 * 1024
    # Data-path HTTP client; aiohttp measured ~10x httpx's native pool at 64 concurrent
    # requests (see README and benchmarks/overhead.py).
    upstream_client: UpstreamClientName = "aiohttp"
    health_interval_s: float = 5.0
    # How long open requests (streams included) may run on after a stop signal or a config reload
    # before they are cut; /ready answers 503 while the process drains.
    drain_s: float = 30.0
    # Reload the config when its file changes (checked every watch_interval_s); SIGHUP and
    # POST /admin/reload reload it either way.
    watch_config: bool = False
    watch_interval_s: float = 2.0


class CostConfig(_Strict):
    """What a backend's tokens cost, in US dollars.

    Either a price per million tokens (a hosted API, or an internal transfer price), or the
    price of the machine per hour: then $/token is derived from the output throughput the
    gateway measures on that backend, so a busier GPU is a cheaper one per token.
    """

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    gpu_hour_usd: float | None = None


class BreakerConfig(_Strict):
    """Circuit breaker per backend: after `failures` consecutive failed attempts (one refused
    connection is enough) it opens for `open_s`; then one probe request at a time is let
    through (half-open); a failed probe reopens it for twice as long, up to `max_open_s`."""

    failures: int = 3
    open_s: float = 5.0
    max_open_s: float = 60.0


class TimeoutsConfig(_Strict):
    """Per-backend time limits: connecting, waiting for the first token, and the whole request."""

    connect_s: float = 2.0
    first_token_s: float = 30.0
    total_s: float = 300.0


class BackendConfig(_Strict):
    """One inference server. `options` and `launch` are interpreted by the backend's plugin."""

    name: str
    plugin: str
    model: str
    url: str | None = None
    api_key: str | None = None
    cost: CostConfig = msgspec.field(default_factory=CostConfig)
    timeouts: TimeoutsConfig = msgspec.field(default_factory=TimeoutsConfig)
    # Requests this gateway process sends the backend at once; beyond it the backend is
    # skipped for that request (None: no limit). Per process: N replicas send up to N times as many.
    max_concurrency: int | None = None
    # When every candidate of a request is at its limit, up to `max_queue` requests wait here for
    # a slot (first come, first served) for up to `queue_timeout_s`; beyond that they are shed
    # with a 503 `overloaded` and a Retry-After (0: no queue, shed at once).
    max_queue: int = 0
    queue_timeout_s: float = 5.0
    weight: float = 1.0  # share of traffic under the `weighted` policy
    launch: dict[str, Any] | None = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class SloConfig(_Strict):
    """A route's latency objective; the `cost` policy picks the cheapest backend meeting it."""

    ttft_ms: float | None = None
    e2e_ms: float | None = None


class RetryConfig(_Strict):
    """Retries before the first byte: connect errors, 429 and 502/503/504.

    `attempts` counts every try, fallbacks to other backends included. Waits grow from
    `backoff_s` by doubling up to `max_backoff_s`, with full jitter; a backend's own
    Retry-After is honoured when it is at most `max_retry_after_s`, otherwise that backend
    is skipped and the client gets the Retry-After.
    """

    attempts: int = 3
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    max_retry_after_s: float = 2.0


class RouteConfig(_Strict):
    """Maps a client-facing model name (or a glob such as `*`) to candidate backends."""

    model: str
    backends: list[str]
    policy: PolicyName = "first_healthy"
    slo: SloConfig = msgspec.field(default_factory=SloConfig)
    retries: RetryConfig = msgspec.field(default_factory=RetryConfig)
    # Continue a stream that fails mid-way on another backend (assistant prefill or the
    # completions API), so the client sees one uninterrupted stream.
    resume: bool = False
    cache: RouteCacheConfig = msgspec.field(default_factory=RouteCacheConfig)
    # A live A/B test between backends or routes, and a candidate mirrored off the response path.
    experiment: ExperimentConfig | None = None
    shadow: ShadowConfig | None = None
    # A draft/target pair decoding greedy requests speculatively (exact: the target's own output).
    speculative: SpeculativeConfig | None = None


class StatsConfig(_Strict):
    """How fast the live statistics forget: samples lose half their weight every `half_life_s`."""

    half_life_s: float = 10.0
    # Share of requests the `latency` and `cost` policies send to a backend other than their
    # pick, so a backend that got faster (or has no samples yet) is noticed; never more than
    # one exploring request per backend at a time.
    explore_ratio: float = 0.02
    load_interval_s: float = 1.0  # how often each backend's own load signal is read


class RoutingConfig(_Strict):
    """Gateway-wide routing settings."""

    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    stats: StatsConfig = msgspec.field(default_factory=StatsConfig)


class GatewayConfig(_Strict):
    """The whole configuration file."""

    backends: list[BackendConfig]
    routes: list[RouteConfig]
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    redis: RedisConfig | None = None
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    experiments: ExperimentsConfig = msgspec.field(default_factory=ExperimentsConfig)
    # API keys and admin keys; without it the gateway serves anyone (the embedded default).
    auth: AuthConfig | None = None
    # The access log and the regular log's format; OpenTelemetry traces (gateway/observability_settings.py).
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)


class ConfigError(Exception):
    """A configuration with one or more problems, each `key.path: what is wrong`."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))


# A plugin-specific validator: given a backend's config, returns problems as (subpath, message).
BackendValidator = Callable[[BackendConfig], Iterable[tuple[str, str]]]

def _check_url(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not a URL (expected http://host:port or https://...)"
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "not a URL (bad port)"
    return None


def parse_config(
    raw: Any,
    *,
    source: str = "config",
    env: dict[str, str] | None = None,
    validators: dict[str, BackendValidator] | None = None,
) -> GatewayConfig:
    """Validate loaded YAML into a `GatewayConfig`, raising `ConfigError` listing every problem.

    `validators` maps plugin names to their backend checks; when given, a backend naming a
    plugin not in it is an error too.
    """
    problems: list[str] = []
    raw = interpolate_env(raw, "", problems, dict(os.environ) if env is None else env)
    if not isinstance(raw, dict):
        raise ConfigError(["<root>: expected a mapping with backends and routes"], source)

    known = set(GatewayConfig.__struct_fields__)
    for key in raw:
        if key not in known:
            problems.append(f"{key}: unknown key")
    for key in ("backends", "routes"):
        if key not in raw:
            problems.append(f"{key}: required key is missing")
        elif not isinstance(raw[key], list):
            problems.append(f"{key}: expected a list")

    server = convert_section(raw.get("server", {}), ServerConfig, "server", problems)
    routing = convert_section(raw.get("routing", {}), RoutingConfig, "routing", problems)
    redis = convert_section(raw["redis"], RedisConfig, "redis", problems) if raw.get("redis") is not None else None
    cache = convert_section(raw.get("cache", {}), CacheConfig, "cache", problems)
    experiments = convert_section(raw.get("experiments", {}), ExperimentsConfig, "experiments", problems)
    auth = convert_section(raw["auth"], AuthConfig, "auth", problems) if raw.get("auth") is not None else None
    if auth is not None:
        problems.extend(auth_problems(auth))
        if auth.store == "redis" and redis is None:
            problems.append("auth.store: 'redis' needs a redis section (the keys live there)")
    logging_config = convert_section(raw.get("logging", {}), LoggingConfig, "logging", problems)
    if logging_config is not None:
        problems.extend(logging_problems(logging_config))
    tracing = convert_section(raw.get("tracing", {}), TracingConfig, "tracing", problems)
    if tracing is not None:
        problems.extend(tracing_problems(tracing))
    backend_at: list[tuple[int, BackendConfig]] = []  # with each one's index in the file
    raw_backends: list[Any] = raw["backends"] if isinstance(raw.get("backends"), list) else []
    for i, item in enumerate(raw_backends):
        backend = convert_section(item, BackendConfig, f"backends[{i}]", problems)
        if backend is not None:
            backend_at.append((i, backend))
            _check_backend(i, backend, problems, validators)
    routes: list[RouteConfig] = []
    raw_routes: list[Any] = raw["routes"] if isinstance(raw.get("routes"), list) else []
    for i, item in enumerate(raw_routes):
        route = convert_section(item, RouteConfig, f"routes[{i}]", problems)
        if route is not None:
            routes.append(route)
            _check_route(i, route, problems)

    seen: set[str] = set()
    for i, backend in backend_at:
        if backend.name in seen:
            problems.append(f"backends[{i}].name: duplicate backend name '{backend.name}'")
        seen.add(backend.name)
    if isinstance(raw.get("backends"), list) and not raw_backends:
        problems.append("backends: at least one backend is required")
    if isinstance(raw.get("routes"), list) and not raw_routes:
        problems.append("routes: at least one route is required")
    # Names come from the raw items so one broken backend does not hide routes' problems.
    declared = {item.get("name") for item in raw_backends if isinstance(item, dict)}
    route_models: dict[str, int] = {}
    for i, route in enumerate(routes):
        if not route.backends:
            problems.append(f"routes[{i}].backends: at least one backend is required")
        for j, name in enumerate(route.backends):
            if name not in declared:
                problems.append(f"routes[{i}].backends[{j}]: unknown backend '{name}'")
        if route.model in route_models:
            problems.append(
                f"routes[{i}].model: duplicate route for '{route.model}' (routes[{route_models[route.model]}] "
                "already serves it)"
            )
        route_models.setdefault(route.model, i)
    problems.extend(experiment_problems(routes, {str(name) for name in declared}))
    plugins = {item["name"]: str(item.get("plugin")) for item in raw_backends
               if isinstance(item, dict) and isinstance(item.get("name"), str)}
    for i, route in enumerate(routes):
        if route.speculative is not None:
            problems.extend(speculative_problems(f"routes[{i}]", route.speculative, route.backends, plugins))
    if server is not None:
        if not 0 <= server.port <= 65535:
            problems.append("server.port: must be between 0 and 65535")
        if server.max_body_bytes <= 0:
            problems.append("server.max_body_bytes: must be positive")
        if server.drain_s < 0:
            problems.append("server.drain_s: must be 0 or more")
        if server.watch_interval_s <= 0:
            problems.append("server.watch_interval_s: must be positive")
    if redis is not None:
        problems.extend(redis_problems(redis))
    if routing is not None:
        _check_routing(routing, problems)
    if cache is not None:
        problems.extend(cache_problems(cache, has_redis=raw.get("redis") is not None))
    if experiments is not None:
        problems.extend(experiments_problems(experiments))

    if problems:
        raise ConfigError(problems, source)
    assert server is not None and routing is not None and cache is not None and experiments is not None
    assert logging_config is not None and tracing is not None
    return GatewayConfig(backends=[b for _, b in backend_at], routes=routes, server=server, routing=routing,
                         redis=redis, cache=cache, experiments=experiments, auth=auth, logging=logging_config,
                         tracing=tracing)


def _check_ranges(prefix: str, checks: Iterable[tuple[str, bool, str]], problems: list[str]) -> None:
    """Append `prefix.key: must ...` for every (key, ok, must) whose `ok` is False."""
    problems.extend(f"{prefix}.{key}: must {must}" for key, ok, must in checks if not ok)


def _check_route(index: int, route: RouteConfig, problems: list[str]) -> None:
    retries, slo = route.retries, route.slo
    _check_ranges(f"routes[{index}]", [
        ("retries.attempts", retries.attempts >= 1, "be at least 1"),
        ("retries.backoff_s", retries.backoff_s >= 0, "not be negative"),
        ("retries.max_backoff_s", retries.max_backoff_s >= retries.backoff_s, "be at least retries.backoff_s"),
        ("retries.max_retry_after_s", retries.max_retry_after_s >= 0, "not be negative"),
        ("slo.ttft_ms", slo.ttft_ms is None or slo.ttft_ms > 0, "be positive"),
        ("slo.e2e_ms", slo.e2e_ms is None or slo.e2e_ms > 0, "be positive"),
    ], problems)
    problems.extend(route_cache_problems(f"routes[{index}]", route.cache))


def _check_routing(routing: RoutingConfig, problems: list[str]) -> None:
    breaker, stats = routing.breaker, routing.stats
    _check_ranges("routing", [
        ("breaker.failures", breaker.failures >= 1, "be at least 1"),
        ("breaker.open_s", breaker.open_s > 0, "be positive"),
        ("breaker.max_open_s", breaker.max_open_s >= breaker.open_s, "be at least breaker.open_s"),
        ("stats.half_life_s", stats.half_life_s > 0, "be positive"),
        ("stats.explore_ratio", 0 <= stats.explore_ratio <= 0.5, "be between 0 and 0.5"),
        ("stats.load_interval_s", stats.load_interval_s >= 0, "not be negative (0 turns load reading off)"),
    ], problems)


def _check_backend(
    index: int,
    backend: BackendConfig,
    problems: list[str],
    validators: dict[str, BackendValidator] | None,
) -> None:
    prefix = f"backends[{index}]"
    if not backend.name:
        problems.append(f"{prefix}.name: must not be empty")
    url_problem = _check_url(backend.url)
    if url_problem:
        problems.append(f"{prefix}.url: {url_problem}")
    for key, value in (("connect_s", backend.timeouts.connect_s), ("first_token_s", backend.timeouts.first_token_s),
                       ("total_s", backend.timeouts.total_s)):
        if value <= 0:
            problems.append(f"{prefix}.timeouts.{key}: must be positive")
    cost = backend.cost
    _check_ranges(prefix, [
        ("weight", backend.weight >= 0, "not be negative"),
        ("max_concurrency", backend.max_concurrency is None or backend.max_concurrency >= 1, "be at least 1"),
        ("max_queue", backend.max_queue >= 0, "not be negative"),
        ("max_queue", backend.max_queue == 0 or backend.max_concurrency is not None,
         "be 0 without max_concurrency (requests queue for a concurrency slot)"),
        ("queue_timeout_s", backend.queue_timeout_s > 0, "be positive"),
        ("cost.input_per_mtok", cost.input_per_mtok >= 0, "not be negative"),
        ("cost.output_per_mtok", cost.output_per_mtok >= 0, "not be negative"),
        ("cost.gpu_hour_usd", cost.gpu_hour_usd is None or cost.gpu_hour_usd > 0, "be positive"),
    ], problems)
    if validators is None:
        return
    validator = validators.get(backend.plugin)
    if validator is None:
        known = ", ".join(sorted(validators)) or "none"
        problems.append(f"{prefix}.plugin: unknown plugin '{backend.plugin}' (installed: {known})")
        return
    for sub, message in validator(backend):
        problems.append(f"{prefix}.{sub}: {message}" if sub else f"{prefix}: {message}")


def load_config(
    path: str | Path,
    *,
    env: dict[str, str] | None = None,
    validators: dict[str, BackendValidator] | None = None,
) -> GatewayConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError([f"<file>: cannot read {path}: {err.strerror}"], str(path)) from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError([f"<yaml>: not valid YAML at {where}: {getattr(err, 'problem', err)}"], str(path)) from err
    return parse_config(raw, source=str(path), env=env, validators=validators)
