"""Fixtures for the unit tests; the fakes themselves live in `fakes.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest_asyncio
from litestar import Litestar

from gateway.app import create_app
from gateway.state import GatewayState

from .asgi_client import serving
from .fakes import FakeBackend, FakeUpstream, fake_registry, gateway_config


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
    """The real ASGI app, lifespan included, on fake backends (default: `f1` behind a `*` route)."""
    state = GatewayState(gateway_config(raw_config), fake_registry(), upstream=FakeUpstream())
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
