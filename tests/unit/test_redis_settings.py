"""The `redis` section per mode (standalone, sentinel, cluster): each problem names its key, each mode
parses into the addresses the client connects to, and describing a deployment never shows a password."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.redis_connect import describe_redis, hash_tag, with_hash_tag

BASE: dict[str, Any] = {
    "backends": [{"name": "a", "plugin": "openai_compat", "model": "m", "url": "http://127.0.0.1:9/v1"}],
    "routes": [{"model": "m", "backends": ["a"]}],
}


def redis_problems(section: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    try:
        parse_config({**BASE, "redis": section}, env=env or {})
    except ConfigError as err:
        return [p for p in err.problems if p.startswith("redis")]
    return []


@pytest.mark.parametrize(("section", "expected"), [
    ({"mode": "standalone"}, "redis.url: required for mode standalone (or set redis.mode: sentinel or cluster)"),
    ({"mode": "sentinel", "master_name": "m"}, "redis.sentinels: required for mode sentinel (a list of host:port)"),
    ({"mode": "sentinel", "sentinels": ["h:26379"]},
     "redis.master_name: required for mode sentinel (the name the sentinels monitor)"),
    ({"mode": "sentinel", "sentinels": ["h:26379", "h"], "master_name": "m"},
     "redis.sentinels[1]: expected host:port, got 'h'"),
    ({"mode": "sentinel", "sentinels": "h:1,h:port", "master_name": "m"},
     "redis.sentinels: expected host:port, got 'h:port'"),
    ({"mode": "sentinel", "sentinels": ["h:26379"], "master_name": "m", "url": "redis://h"},
     "redis.url: not used with mode: sentinel (the sentinels say where the primary is)"),
    ({"mode": "cluster"}, "redis.nodes: required for mode cluster (a list of host:port)"),
    ({"mode": "cluster", "nodes": ["a:7000", "b:99999"]}, "redis.nodes[1]: expected host:port, got 'b:99999'"),
    ({"mode": "cluster", "nodes": ["a:7000"], "url": "redis://a:7000"},
     "redis.nodes: give redis.nodes or redis.url with mode: cluster, not both"),
    ({"mode": "cluster", "url": "redis://a:7000/2"}, "redis.db: Redis Cluster has only database 0"),
    ({"mode": "cluster", "nodes": ["a:7000"], "db": 1}, "redis.db: Redis Cluster has only database 0"),
    ({"mode": "cluster", "url": "unix:///run/redis.sock"},
     "redis.url: Redis Cluster is reached over TCP (redis:// or rediss://), not unix://"),
    ({"url": "redis://h", "sentinels": ["h:26379"], "master_name": "m"},
     "redis.sentinels: only used with mode: sentinel (redis.mode is standalone)"),
    ({"url": "redis://h", "nodes": ["h:7000"]}, "redis.nodes: only used with mode: cluster (redis.mode is standalone)"),
    ({"url": "redis://h:6379/1", "db": 2}, "redis.db: redis.url already names database 1 (give it in one place)"),
    ({"url": "redis://:pw@h", "password": "pw"},
     "redis.password: redis.url already carries a password (give it in one place)"),
    ({"url": "redis://h", "tls_ca_file": "ca.pem"},
     "redis.tls_ca_file: only used with TLS (set redis.tls: true or use rediss://)"),
    ({"url": "unix:///run/redis.sock", "tls": True}, "redis.tls: a unix:// socket does not use TLS"),
    ({"url": "redis://h:http"}, "redis.url: the port is not a number between 1 and 65535"),
    ({"url": "http://h"}, "redis.url: not a Redis URL (expected redis://, rediss:// or unix://)"),
])
def test_config_problems_name_the_key(section: dict[str, Any], expected: str) -> None:
    assert expected in redis_problems(section)


def test_config_modes_parse() -> None:
    assert redis_problems({"mode": "galaxy", "url": "redis://h"})[0].startswith("redis.mode: invalid enum value")
    env = {"SENTINELS": "10.0.0.1:26379, 10.0.0.2:26379", "REDIS_PASSWORD": "s3cret"}
    config = parse_config({**BASE, "redis": {"mode": "sentinel", "sentinels": "${SENTINELS}", "master_name": "gw",
                                             "password": "${REDIS_PASSWORD}", "db": "2"}}, env=env).redis
    assert config is not None and config.mode == "sentinel" and config.password == "s3cret" and config.db == 2
    assert config.sentinel_addresses == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert describe_redis(config) == "redis sentinel 'gw' via 10.0.0.1:26379,10.0.0.2:26379"
    cluster = parse_config({**BASE, "redis": {"mode": "cluster", "nodes": ["[::1]:7000", "h:7001"],
                                              "password": "x", "tls": True}}).redis
    assert cluster is not None and cluster.node_addresses == [("::1", 7000), ("h", 7001)]
    assert describe_redis(cluster) == "redis cluster via [::1]:7000,h:7001 (tls)"
    plain = parse_config({**BASE, "redis": {"url": "rediss://:s3cret@cache:6380/0"}}).redis
    assert plain is not None and plain.mode == "standalone" and plain.uses_tls
    assert describe_redis(plain) == "redis at cache:6380 (tls)"  # never the password
    assert with_hash_tag("gw:") == "{gw:}" and with_hash_tag("gateway:{exp}:") == "gateway:{exp}:"
    assert hash_tag("a{}b{c}") is None and hash_tag("e/m/t/{d1}") == "d1"  # Redis's own rule
