"""Fixtures for the unit tests; the fakes themselves live in `fakes.py`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest_asyncio
from litestar import Litestar

from gateway.app import create_app
from gateway.state import GatewayState

from .asgi_client import serving
from .fakes import DEFAULT_CONFIG, FakeBackend, FakeUpstream, fake_registry, gateway_config


class GatewayUnderTest:
    """A running app: the ASGI app, a client for it, and the state to script the backends through."""

    def __init__(self, app: Litestar, client: httpx.AsyncClient, state: GatewayState) -> None:
        self.app = app
        self.client = client
        self.state = state

    def backend(self, name: str = "f1") -> FakeBackend:
        backend = self.state.backends[name]
        assert isinstance(backend, FakeBackend)
        return backend


@asynccontextmanager
async def running_gateway(raw_config: dict[str, Any] | None = None) -> AsyncIterator[GatewayUnderTest]:
    """The real ASGI app, lifespan included, on fake backends (default: `f1` behind a `*` route).

    Its access log goes to a file of its own unless the config has a `logging` section: on stderr, the
    lines of a gateway that outlives one test (the module's `gateway`) are written by a worker thread
    whenever their batch is due, sometimes while pytest is not capturing, and land in the run's output."""
    raw = raw_config or DEFAULT_CONFIG
    with tempfile.TemporaryDirectory(prefix="gateway-test-") as scratch:
        if "logging" not in raw:
            raw = {**raw, "logging": {"access_path": os.path.join(scratch, "access.log")}}
        state = GatewayState(gateway_config(raw), fake_registry(), upstream=FakeUpstream())
        async with gateway_serving(state) as gw:
            yield gw


@asynccontextmanager
async def gateway_serving(state: GatewayState) -> AsyncIterator[GatewayUnderTest]:
    """The app for `state`, started in this event loop, with a client; shut down on the way out."""
    app = create_app(state, tune_gc=False)
    async with serving(app) as client:
        yield GatewayUnderTest(app, client, state)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway() -> AsyncIterator[GatewayUnderTest]:
    """Module-scoped so hypothesis can drive one app with hundreds of examples; do not script its backend."""
    async with running_gateway() as running:
        yield running
