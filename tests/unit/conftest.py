"""Fixtures for the unit tests; the fakes themselves live in `fakes.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest_asyncio
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.state import GatewayState

from .fakes import FakeBackend, FakeUpstream, fake_registry, gateway_config


class GatewayUnderTest:
    """A running app on fake backends: the client, and the state to script the backends through."""

    def __init__(self, client: AsyncTestClient, state: GatewayState) -> None:
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
    app = create_app(state, tune_gc=False)
    async with AsyncTestClient(app) as client:
        yield GatewayUnderTest(client, state)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway() -> AsyncIterator[GatewayUnderTest]:
    """Module-scoped so hypothesis can drive one app with hundreds of examples; do not script its backend."""
    async with running_gateway() as running:
        yield running
