"""One place that turns the `redis` config section into a client.

Every part of the gateway that keeps shared state (routing, cache, experiments, limits) asks
for its client here, so the deployment's Redis topology is a config choice, not code:
`redis.asyncio.Redis` for a standalone server, the same class on a Sentinel-managed pool for
`mode: sentinel` (it asks the sentinels for the primary on every new connection, so it follows a
failover), `redis.asyncio.cluster.RedisCluster` for `mode: cluster`.

Redis Cluster runs a multi-key command or a Lua script only when all its keys hash to one slot,
and a script may touch only the keys it was given. Every multi-key operation in the gateway
therefore keeps its keys under one hash tag (`{...}` in the name: only the part inside is hashed),
and `with_hash_tag` gives a key prefix one when it has none. The same key names are used in every
mode, so moving a deployment from a standalone Redis to a cluster changes no key.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.config import RedisConfig

__all__ = ["REDIS_ERRORS", "UNREACHABLE", "RedisClient", "connect_redis", "describe_redis", "describe_redis_url",
           "hash_tag", "is_unreachable", "key_segment", "with_hash_tag"]

# What `connect_redis` returns. Both speak the same commands, pipelines, scripts and pub/sub; the
# cluster client routes each command to the node owning its keys' slot.
RedisClient: TypeAlias = aioredis.Redis | RedisCluster

# Errors that mean "Redis is away or too slow" (as opposed to Redis refusing one command). A cluster
# that lost a primary answers CLUSTERDOWN (or leaves a slot uncovered) until a replica takes over.
UNREACHABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, OSError, TimeoutError, ClusterDownError, SlotNotCoveredError,
)
# Every error a Redis call can raise. `RedisClusterException` is not a `RedisError`: redis-py's
# cluster client raises it for its own failures (no node reachable, keys in several slots).
REDIS_ERRORS: tuple[type[BaseException], ...] = (*UNREACHABLE, RedisError, RedisClusterException)


def is_unreachable(err: BaseException) -> bool:
    """Whether `err` says Redis is away (not that it refused one command)."""
    if isinstance(err, UNREACHABLE):
        return True
    # The cluster client wraps "no startup node answers" in a RedisClusterException raised from the
    # connection error; a cross-slot mistake is the same class without such a cause.
    return isinstance(err, RedisClusterException) and isinstance(err.__cause__, UNREACHABLE)


def connect_redis(
    config: RedisConfig, *, decode_responses: bool = False, socket_timeout_s: float = 2.0
) -> RedisClient:
    """A client for the configured topology that never retries or waits on its own: the caller's
    guard and budget decide. `socket_timeout_s` bounds each command and each connection attempt.

    No network traffic happens here; the first command connects (and, for a cluster, reads the
    slot map; for sentinel, asks the sentinels for the primary).
    """
    common: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
        # No retry on a connection error or timeout: a retry would double the time a caller waits
        # on a Redis that is away, and the callers already fall back (and try again later).
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    password = config.password or None
    tls: dict[str, Any] = {}
    if config.uses_tls and config.tls_ca_file:
        tls["ssl_ca_certs"] = config.tls_ca_file
    if config.mode == "cluster":
        username = config.username
        if config.url is not None:
            nodes = [_url_node(config.url)]
            parts = urlsplit(config.url)
            password = unquote(parts.password) if parts.password else password
            username = unquote(parts.username) if parts.username else username
        else:
            nodes = [ClusterNode(host, port) for host, port in config.node_addresses]
        # The cluster client's `retry` covers its own redirection-free retries (connection errors,
        # CLUSTERDOWN); MOVED and ASK redirections are still followed, as they must be.
        return RedisCluster(startup_nodes=nodes, username=username, password=password,
                            ssl=config.uses_tls, **tls, **common)
    if config.mode == "sentinel":
        if config.uses_tls:
            tls["ssl"] = True
        sentinel_kwargs: dict[str, Any] = {
            **{k: v for k, v in common.items() if k != "decode_responses"},
            "password": config.sentinel_password or None,
            **tls,
        }
        sentinel = Sentinel(config.sentinel_addresses, sentinel_kwargs=sentinel_kwargs)
        return sentinel.master_for(
            config.master_name or "", redis_class=aioredis.Redis, username=config.username, password=password,
            db=config.db or 0, **tls, **common,
        )
    assert config.url is not None  # `redis_problems` requires a url for standalone
    url = config.url
    if config.tls and url.startswith("redis://"):
        url = "rediss://" + url.removeprefix("redis://")
    # from_url lets what the url names (database, password) win over these keyword defaults.
    extra: dict[str, Any] = {"db": config.db} if config.db is not None else {}
    if password is not None:
        extra["password"] = password
    if config.username:
        extra["username"] = config.username
    return aioredis.Redis.from_url(url, **extra, **tls, **common)


def _url_node(url: str) -> ClusterNode:
    parts = urlsplit(url)
    return ClusterNode(parts.hostname or "localhost", parts.port or 6379)


def describe_redis_url(url: str) -> str:
    """`redis at host:port` (never the password)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"redis at unix:{parts.path}"
    return f"redis at {parts.hostname or 'localhost'}:{parts.port or 6379}"


def describe_redis(config: RedisConfig) -> str:
    """Where the state lives, for logs and reports: the mode and the addresses, never a password.
    `redis at host:6379`, `redis sentinel 'primary' via h1:26379,h2:26379`, `redis cluster via h1:7000,...`."""
    tls = " (tls)" if config.uses_tls else ""
    if config.mode == "sentinel":
        where = ",".join(_address(host, port) for host, port in config.sentinel_addresses)
        return f"redis sentinel {config.master_name!r} via {where}{tls}"
    if config.mode == "cluster":
        if config.url is not None:
            where = describe_redis_url(config.url).removeprefix("redis at ")
        else:
            where = ",".join(_address(host, port) for host, port in config.node_addresses)
        return f"redis cluster via {where}{tls}"
    return describe_redis_url(config.url or "") + tls


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hash_tag(key: str) -> str | None:
    """The part of `key` Redis Cluster hashes when it is not the whole key: the text between the
    first `{` and the first `}` after it, if that is not empty (Redis's own rule)."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1:end]


def key_segment(name: str) -> str:
    """A name (an experiment's, an arm's, an API key's) as one segment of a ':'-separated Redis key:
    percent-escaped, so no name can pose as two segments, end a `{...}` hash tag early or open another."""
    return name.replace("%", "%25").replace(":", "%3A").replace("{", "%7B").replace("}", "%7D")


def with_hash_tag(prefix: str) -> str:
    """`prefix` itself when it already holds a hash tag, else `{prefix}`: every key built on the
    result lands in one cluster slot, so scripts and transactions over them are allowed."""
    return prefix if hash_tag(prefix) is not None else "{" + prefix + "}"
