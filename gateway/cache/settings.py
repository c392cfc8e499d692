"""The response cache's configuration: per route (what is cached, for how long) and gateway-wide (where).

Kept beside the cache rather than in gateway/config.py, which imports these sections and checks
their ranges through `route_cache_problems` and `cache_problems`.
"""

from __future__ import annotations

from typing import Literal, get_args

import msgspec

CacheMode = Literal["deterministic", "always", "off"]
CACHE_MODES: tuple[str, ...] = get_args(CacheMode)
CacheStoreName = Literal["auto", "memory", "redis"]
MiB = 1024 * 1024


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An unknown key is an error, as everywhere in the config."""


class RouteCacheConfig(_Section):
    """What a route caches.

    `deterministic` (the default) stores answers to requests that ask for a reproducible output
    (temperature 0, top_k 1, or a seed) and embeddings; `always` stores every answer, sampled
    ones included (a later identical request gets the same sample); `off` never reads or writes.
    """

    mode: CacheMode = "deterministic"
    ttl_s: float = 3600.0
    # An answer cut by max_tokens is complete as asked, but a caller raising max_tokens would
    # get a different one under the same key only if max_tokens were not in the key (it is);
    # off by default because such answers are usually retried with a larger budget, not reused.
    store_length: bool = False
    # Replay a stored stream with the gaps its chunks originally came with, for clients (demos,
    # load tests) that want a cached answer to look live; off: every chunk at once.
    pace_replay: bool = False


class CacheConfig(_Section):
    """Where cached answers live and how hard the gateway tries to reach them."""

    # auto: Redis when `redis.url` is set (shared by every replica), otherwise this process's memory.
    store: CacheStoreName = "auto"
    max_bytes: int = 64 * MiB  # the in-process store's bound
    max_entry_bytes: int = 1 * MiB  # larger answers are served but not stored
    # A Redis lookup or write that takes longer than this is abandoned: the request goes on to
    # the backend as on a miss. After a failure Redis is left alone for `retry_s`.
    budget_ms: float = 50.0
    retry_s: float = 1.0
    # An identical request already in flight is followed instead of sent again; a follower that
    # hears nothing new from its leader for this long goes to the backend itself.
    follower_timeout_s: float = 30.0
    # Across replicas the leader holds a Redis lock, refreshed while it works, that lapses this
    # long after a leader dies.
    lock_ttl_s: float = 10.0


def route_cache_problems(prefix: str, cache: RouteCacheConfig) -> list[str]:
    """Range problems of one route's `cache:` section, each as `path: must ...`."""
    checks = [("ttl_s", cache.ttl_s > 0, "be positive")]
    return [f"{prefix}.cache.{key}: must {must}" for key, ok, must in checks if not ok]


def cache_problems(cache: CacheConfig, *, has_redis: bool) -> list[str]:
    """Range and consistency problems of the gateway-wide `cache:` section."""
    checks = [
        ("max_bytes", cache.max_bytes > 0, "be positive"),
        ("max_entry_bytes", 0 < cache.max_entry_bytes <= 512 * MiB, "be between 1 and 536870912 (Redis' limit)"),
        ("budget_ms", cache.budget_ms > 0, "be positive"),
        ("retry_s", cache.retry_s > 0, "be positive"),
        ("follower_timeout_s", cache.follower_timeout_s > 0, "be positive"),
        ("lock_ttl_s", cache.lock_ttl_s >= 0.1, "be at least 0.1"),
    ]
    problems = [f"cache.{key}: must {must}" for key, ok, must in checks if not ok]
    if cache.store == "redis" and not has_redis:
        problems.append("cache.store: 'redis' needs a redis section (redis.url, or sentinels or nodes)")
    return problems
