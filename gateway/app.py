"""The Litestar application factory and its lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException
from litestar.handlers import ASGIRouteHandler, asgi

from gateway.api.asgi_io import Receive, Scope, Send
from gateway.api.auth_guard import auth_guard
from gateway.api.experiment_routes import ROUTES as EXPERIMENT_ROUTES
from gateway.api.key_routes import ROUTES as KEY_ROUTES
from gateway.api.openai_routes import OpenAIHandler
from gateway.api.ops_routes import ROUTES
from gateway.config import GatewayConfig, load_config
from gateway.errors import GatewayError
from gateway.ops.live_state import LiveState
from gateway.ops.reload import ConfigReloader
from gateway.ops.worker_metrics import ENV as METRICS_DIR_ENV
from gateway.ops.worker_metrics import WorkerMetrics
from gateway.plugins import BackendRegistry, load_backend_registry
from gateway.schemas import OPENAI_PATHS
from gateway.state import GatewayState

log = logging.getLogger("gateway")

def _http_exception(_request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (unknown path, wrong method) in OpenAI's error shape."""
    error = GatewayError(exc.status_code, str(exc.detail), code=f"http_{exc.status_code}")
    return Response(error.body(), status_code=exc.status_code, media_type="application/json")


def _internal_error(_request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error", exc_info=exc)
    error = GatewayError(500, "internal gateway error; see the gateway's logs", type="api_error")
    return Response(error.body(), status_code=500, media_type="application/json")


def _openai_route(path: str, handler: OpenAIHandler) -> ASGIRouteHandler:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await handler(scope, receive, send)

    endpoint.__name__ = f"openai_{handler.kind}"
    return asgi(path, copy_scope=False)(endpoint)


def create_app(
    state: GatewayState,
    *,
    tune_gc: bool = True,
    config_path: str | Path | None = None,
    registry: BackendRegistry | None = None,
    handle_signals: bool = False,
) -> Litestar:
    """A Litestar app serving `state`; the lifespan starts and stops its backends.

    With `config_path` (and the `registry` its plugins came from) the config can be reloaded
    while serving: POST /admin/reload, a change of the file when `server.watch_config` is on,
    and SIGHUP when `handle_signals` (the CLI's server, not tests sharing one process), which
    also makes /ready fail as soon as SIGTERM or SIGINT arrives, while open requests drain.
    """
    live = LiveState(state)
    reloader = (ConfigReloader(live, config_path, registry or load_backend_registry(),
                               watch_interval_s=state.config.server.watch_interval_s
                               if state.config.server.watch_config else None)
                if config_path is not None else None)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await live.current.startup()
        if tune_gc:
            # Objects alive after start-up live for the process; freezing them and raising
            # the young-generation threshold cut per-request CPU by about a fifth.
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 20, 20)
        if reloader is not None:
            reloader.start()
            if handle_signals:
                _on_sighup(reloader)
        if handle_signals:
            _drain_on_stop(live)
        workers = _worker_metrics(live)
        try:
            yield
        finally:
            if workers is not None:
                await workers.aclose()
            if reloader is not None:
                await reloader.aclose()
            await live.current.shutdown()

    handlers = [_openai_route(path, OpenAIHandler(live, kind)) for kind, path in OPENAI_PATHS.items()]
    app = Litestar(
        route_handlers=[*ROUTES, *EXPERIMENT_ROUTES, *KEY_ROUTES, *handlers],
        lifespan=[lifespan],
        exception_handlers={HTTPException: _http_exception, Exception: _internal_error},
        before_request=auth_guard,
        openapi_config=None,
        debug=False,
        # Logging is set up by the gateway (configure_logging: text or JSON, stderr); Litestar's default
        # would replace the root logger's handler with its own format when the app is built.
        logging_config=None,
    )
    app.state.live = live
    app.state.reloader = reloader
    return app


def _worker_metrics(live: LiveState) -> WorkerMetrics | None:
    """Under `gateway serve --workers N` (the parent sets the directory), /metrics merges every worker's."""
    directory = os.environ.get(METRICS_DIR_ENV)
    if not directory:
        return None
    metrics = live.current.metrics  # one object for the process's life: a reload carries it over
    workers = WorkerMetrics(directory, metrics.render_own)
    metrics.combine = workers.collect
    workers.start()
    return workers


def _drain_on_stop(live: LiveState) -> None:
    """SIGTERM/SIGINT: mark the process draining (/ready 503), then let the server's own handler
    stop accepting connections and wait for open ones (up to `server.drain_s`)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue  # nobody stops the server on it: leave the default alone

        def handler(signum: int, frame: FrameType | None, previous: Callable[..., Any] = previous) -> None:
            if not live.draining:
                log.info("stopping: %d open request(s) may finish (up to %.0fs)",
                         live.current.open_requests, live.current.config.server.drain_s)
            live.begin_drain()
            previous(signum, frame)

        signal.signal(sig, handler)


def _on_sighup(reloader: ConfigReloader) -> None:
    """SIGHUP reloads the config (the Unix convention for daemons)."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[object]] = set()

    def reload() -> None:
        task = loop.create_task(reloader.reload("SIGHUP"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP here
        log.warning("SIGHUP cannot be handled here; reload with POST /admin/reload instead")


def build_state(config_path: str | Path, registry: BackendRegistry | None = None) -> GatewayState:
    """Load and validate a config file and build the gateway's state from it."""
    registry = registry or load_backend_registry()
    config: GatewayConfig = load_config(config_path, validators=registry.validators())
    return GatewayState(config, registry, config_dir=Path(config_path).absolute().parent)


def app_from_env() -> Litestar:
    """Factory for servers that import the app by name (granian, uvicorn's workers): config from
    $GATEWAY_CONFIG; each worker process builds its own state and reloads on its own SIGHUP."""
    path = os.environ["GATEWAY_CONFIG"]
    registry = load_backend_registry()
    return create_app(build_state(path, registry), config_path=path, registry=registry, handle_signals=True)
