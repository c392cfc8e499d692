"""Operational routes: liveness, readiness, metrics and the model list."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post

from gateway.cache.stores import CacheStoreError
from gateway.errors import GatewayError
from gateway.ops.live_state import serving_state
from gateway.routing.report import backends_report
from gateway.schemas import ModelCard, ModelList


@get("/health", sync_to_thread=False)
def health() -> Response[bytes]:
    """The process is up and serving HTTP."""
    return Response(b'{"status":"ok"}', media_type="application/json")


@get("/ready")
async def ready(request: Request[Any, Any, Any]) -> Response[bytes]:
    """200 while at least one backend is healthy, 503 naming why not otherwise (and while draining)."""
    state = serving_state(request)
    if request.app.state.live.draining:
        error = GatewayError(503, f"shutting down: finishing {state.open_requests} open request(s)",
                             type="api_error", code="draining")
        return Response(error.body(), status_code=503, media_type="application/json", headers={"retry-after": "1"})
    healthy = {name: state.health.is_healthy(name) for name in state.backends}
    if any(healthy.values()):
        body = msgspec.json.encode({"status": "ready", "backends": healthy})
        return Response(body, media_type="application/json")
    reasons = "; ".join(f"{n}: {state.health.reasons.get(n, 'unhealthy')}" for n in state.backends)
    error = GatewayError(503, f"no healthy backend ({reasons})", type="api_error", code="not_ready")
    return Response(error.body(), status_code=503, media_type="application/json", headers={"retry-after": "1"})


@get("/metrics", sync_to_thread=False)
def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text exposition."""
    return Response(serving_state(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@get("/v1/models", sync_to_thread=False)
def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The model names clients can ask for (routes' names; backends' models behind globs)."""
    names = serving_state(request).routes.model_names()
    key = getattr(request.state, "api_key", None)  # set by the auth guard: list what this key may call
    if key is not None:
        names = [name for name in names if key.allows(name)]
    models = ModelList(data=[ModelCard(id=name) for name in names])
    return Response(msgspec.json.encode(models), media_type="application/json")


@get("/admin/backends", sync_to_thread=False)
def admin_backends(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Live statistics, breaker, load and cost per backend (JSON)."""
    return Response(msgspec.json.encode(backends_report(serving_state(request))), media_type="application/json")


@get("/admin/speculative", sync_to_thread=False)
def admin_speculative(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Each speculative pair: probe verdict, acceptance, tokens per target call, chosen k, fallbacks (JSON)."""
    return Response(msgspec.json.encode({"pairs": serving_state(request).speculative.describe()}),
                    media_type="application/json")


@get("/admin/cache", sync_to_thread=False)
def admin_cache(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The response cache: its store, hits/misses/coalesced/bypass per route, bytes, errors (JSON)."""
    return Response(msgspec.json.encode(serving_state(request).cache.stats()), media_type="application/json")


@delete("/admin/cache", status_code=200)
async def admin_cache_delete(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Drop cached answers: all of them, or only `?model=` (a route's model), `?tenant=` (the tenant
    label the metrics show, e.g. key-0123456789ab, or anonymous), or both."""
    params = request.query_params
    unknown = sorted(set(params) - {"model", "tenant"})
    if unknown:
        error = GatewayError(400, f"unknown query parameter {unknown[0]!r}: use model and/or tenant",
                             param=unknown[0], code="invalid_value")
        return Response(error.body(), status_code=400, media_type="application/json")
    model, tenant = params.get("model") or None, params.get("tenant") or None
    try:
        deleted = await serving_state(request).cache.delete(model=model, tenant=tenant)
    except CacheStoreError as err:
        error = GatewayError(503, f"the cache store could not be reached: {err}", type="api_error",
                             code="cache_unavailable")
        return Response(error.body(), status_code=503, media_type="application/json", headers={"retry-after": "1"})
    body = {"deleted": deleted, "model": model, "tenant": tenant}
    return Response(msgspec.json.encode(body), media_type="application/json")


@post("/admin/reload", status_code=200)
async def admin_reload(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Reload the config file now: 200 with what changed, or 400 with every problem (the running
    config keeps serving)."""
    reloader = getattr(request.app.state, "reloader", None)
    if reloader is None:
        error = GatewayError(409, "this gateway was not started from a config file it can reload",
                             code="reload_unavailable")
        return Response(error.body(), status_code=409, media_type="application/json")
    outcome = await reloader.reload("admin API")
    return Response(msgspec.json.encode(outcome.as_dict()), status_code=200 if outcome.ok else 400,
                    media_type="application/json")


ROUTES = [health, ready, metrics, list_models, admin_backends, admin_speculative, admin_cache, admin_cache_delete,
          admin_reload]
