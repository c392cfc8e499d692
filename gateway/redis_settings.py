"""The `redis:` config section: which Redis deployment holds the state replicas share.

Three topologies, picked by `mode`:

    standalone  one server (or a managed endpoint): `url: redis://host:6379/0` (`rediss://` for TLS,
                `unix:///path` for a socket). The default, and what a bare `url` has always meant.
    sentinel    a primary with replicas watched by Redis Sentinel: `sentinels: [host:26379, ...]` and
                `master_name`; the client asks the sentinels where the primary is and follows a failover.
    cluster     Redis Cluster: `nodes: [host:7000, ...]` (or `url` naming any one node); the client
                learns the slot map from them and follows redirections and resharding.

Passwords are keys of their own (`password`, `sentinel_password`) so they can come from `${ENV}`
without being spliced into a URL. `sentinels` and `nodes` also take one comma-separated string,
because `${ENV}` expands to a string, never to a list. Checks live here (not in msgspec types)
because which keys are required depends on `mode`.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

import msgspec

RedisMode = Literal["standalone", "sentinel", "cluster"]

_URL_SCHEMES = ("redis://", "rediss://", "unix://")


class RedisConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Optional shared state; without it the gateway uses its in-process store."""

    mode: RedisMode = "standalone"
    # standalone: required. cluster: any one node, instead of `nodes`. sentinel: not used.
    url: str | None = None
    sentinels: list[str] | str = msgspec.field(default_factory=list)  # host:port of each sentinel
    master_name: str | None = None  # the name the sentinels monitor the primary under
    nodes: list[str] | str = msgspec.field(default_factory=list)  # host:port of cluster nodes to start from
    username: str | None = None  # an ACL user (Redis 6+) on the data nodes
    password: str | None = None  # the data nodes' password (a password in `url` takes precedence)
    sentinel_password: str | None = None  # the sentinels' own `requirepass`, when they have one
    db: int | None = None  # sentinel and standalone (default 0; a url's /N path names it instead)
    tls: bool = False  # TLS to every node (and sentinel); `rediss://` in a url means the same
    tls_ca_file: str | None = None  # a CA bundle for servers whose certificate the system does not trust

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """`sentinels` as (host, port) pairs (only call after `redis_problems` found none)."""
        return [_must_parse(item) for item in _items(self.sentinels)]

    @property
    def node_addresses(self) -> list[tuple[str, int]]:
        """`nodes` as (host, port) pairs (only call after `redis_problems` found none)."""
        return [_must_parse(item) for item in _items(self.nodes)]

    @property
    def uses_tls(self) -> bool:
        return self.tls or (self.url or "").startswith("rediss://")


def parse_host_port(text: str) -> tuple[str, int] | None:
    """`host:port` (`[v6addr]:port` for IPv6) as a pair, or None when it is not one."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
        if ":" in host:  # a bare IPv6 address is ambiguous without brackets
            return None
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def _items(value: list[str] | str) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [item.strip() for item in value]


def _must_parse(item: str) -> tuple[str, int]:
    pair = parse_host_port(item)
    if pair is None:
        raise ValueError(f"not host:port: {item!r}")
    return pair


def _url_db(url: str) -> int | None:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else None


def redis_problems(config: RedisConfig) -> list[str]:
    """Every problem of the section, each with its key path (`redis.sentinels: required for mode sentinel`)."""
    problems: list[str] = []
    mode = config.mode

    def addresses(key: str, value: list[str] | str) -> None:
        items = _items(value)
        for i, item in enumerate(items):
            if parse_host_port(item) is None:
                where = f"redis.{key}[{i}]" if isinstance(value, list) else f"redis.{key}"
                problems.append(f"{where}: expected host:port, got {item!r}")
        if not items:
            problems.append(f"redis.{key}: required for mode {mode} (a list of host:port)")

    # Keys that belong to another mode: usually a forgotten `mode:`, so say which mode wants them.
    if mode != "sentinel":
        for key, given in (("sentinels", bool(_items(config.sentinels))), ("master_name", config.master_name),
                           ("sentinel_password", config.sentinel_password)):
            if given:
                problems.append(f"redis.{key}: only used with mode: sentinel (redis.mode is {mode})")
    if mode != "cluster" and _items(config.nodes):
        problems.append(f"redis.nodes: only used with mode: cluster (redis.mode is {mode})")

    url = config.url
    if url is not None and not url.startswith(_URL_SCHEMES):
        problems.append("redis.url: not a Redis URL (expected redis://, rediss:// or unix://)")
        url = None
    if mode == "standalone":
        if config.url is None:
            problems.append("redis.url: required for mode standalone (or set redis.mode: sentinel or cluster)")
    elif mode == "sentinel":
        addresses("sentinels", config.sentinels)
        if not config.master_name:
            problems.append("redis.master_name: required for mode sentinel (the name the sentinels monitor)")
        if config.url is not None:
            problems.append("redis.url: not used with mode: sentinel (the sentinels say where the primary is)")
    else:
        if config.url is None:
            addresses("nodes", config.nodes)
        elif _items(config.nodes):
            problems.append("redis.nodes: give redis.nodes or redis.url with mode: cluster, not both")
        if url is not None and url.startswith("unix://"):
            problems.append("redis.url: Redis Cluster is reached over TCP (redis:// or rediss://), not unix://")
        if config.db or (url is not None and _url_db(url)):
            problems.append("redis.db: Redis Cluster has only database 0")

    if url is not None:
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018  (raises for a port that is not a number in range)
        except ValueError:
            problems.append("redis.url: the port is not a number between 1 and 65535")
        if url.startswith(("redis://", "rediss://")) and not parts.hostname:
            problems.append("redis.url: names no host")
        if config.password and parts.password:
            problems.append("redis.password: redis.url already carries a password (give it in one place)")
        if config.db is not None and _url_db(url) is not None and mode == "standalone":
            problems.append("redis.db: redis.url already names database "
                            f"{_url_db(url)} (give it in one place)")
        if url.startswith("unix://") and config.tls:
            problems.append("redis.tls: a unix:// socket does not use TLS")
    if config.db is not None and config.db < 0:
        problems.append("redis.db: must not be negative")
    if config.tls_ca_file is not None and not config.uses_tls:
        problems.append("redis.tls_ca_file: only used with TLS (set redis.tls: true or use rediss://)")
    return problems
