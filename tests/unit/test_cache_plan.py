"""What the cache does per request (route mode, headers) and where entries live in a store."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest

from gateway.cache.plan import CacheHeaders, entry_pattern, plan_request, store_key
from gateway.cache.settings import RouteCacheConfig
from gateway.config import ConfigError, parse_config
from gateway.errors import GatewayError

GREEDY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
SAMPLED: dict[str, Any] = {**GREEDY, "temperature": 0.8}


def headers(cache_control: str | None = None, ttl: str | None = None, namespace: str | None = None) -> CacheHeaders:
    parsed = CacheHeaders()
    parsed.cache_control = cache_control.encode() if cache_control is not None else None
    parsed.ttl = ttl.encode() if ttl is not None else None
    parsed.namespace = namespace.encode() if namespace is not None else None
    return parsed


def plan(body: dict[str, Any], config: RouteCacheConfig | None = None, kind: str = "chat", tenant: str = "t",
         **header_values: str) -> Any:
    return plan_request(config or RouteCacheConfig(), kind, "m", body, tenant, headers(**header_values))


def test_modes_decide_what_is_cacheable() -> None:
    assert plan(GREEDY) is not None
    assert plan(SAMPLED) is None  # deterministic is the default
    assert plan({**SAMPLED, "seed": 1}) is not None
    assert plan(SAMPLED, RouteCacheConfig(mode="always")) is not None
    assert plan(GREEDY, RouteCacheConfig(mode="off")) is None
    embedding = {"model": "m", "input": "text"}
    assert plan(embedding, kind="embedding") is not None  # embeddings are deterministic


def test_cache_control_and_ttl_headers() -> None:
    default = plan(GREEDY)
    assert default.read and default.write and default.ttl_s == 3600
    no_cache = plan(GREEDY, cache_control="no-cache")
    assert not no_cache.read and no_cache.write
    no_store = plan(GREEDY, cache_control="max-age=0, No-Store")
    assert no_store.read and not no_store.write
    assert plan(GREEDY, cache_control="no-cache, no-store") is None
    assert plan(GREEDY, ttl="90").ttl_s == 90 and plan(GREEDY, ttl="2.5").ttl_s == 2.5
    zero = plan(GREEDY, ttl="0")
    assert zero.read and not zero.write
    for bad in ("-1", "soon", "nan", "inf", ""):
        with pytest.raises(GatewayError) as caught:
            plan(GREEDY, ttl=bad)
        assert caught.value.status == 400 and caught.value.param == "x-gateway-cache-ttl"
    # A malformed header is refused even on a request the cache would not touch.
    with pytest.raises(GatewayError):
        plan(SAMPLED, ttl="soon")


def test_tenants_and_namespaces_separate_entries() -> None:
    alice, bob = plan(GREEDY, tenant="key-a"), plan(GREEDY, tenant="key-b")
    assert alice.digest != bob.digest
    spaced = plan(GREEDY, tenant="key-a", namespace="run-1")
    assert spaced.digest not in (alice.digest, bob.digest)
    assert spaced.key.tenant == "key-a~run-1"
    with pytest.raises(GatewayError):
        plan(GREEDY, namespace="x" * 200)


def test_store_keys_match_the_deletion_patterns_and_nothing_else() -> None:
    awkward = plan_request(RouteCacheConfig(), "chat", "org/model:7b*[q4]", GREEDY, "key-abc~ns/1", headers())
    plain = plan_request(RouteCacheConfig(), "chat", "other", GREEDY, "key-abcdef", headers())
    key, other = store_key(awkward.key), store_key(plain.key)
    assert key.count("/") == 3 and "*" not in key and "[" not in key  # the layout survives any model name
    assert fnmatch.fnmatchcase(key, entry_pattern())
    assert fnmatch.fnmatchcase(key, entry_pattern(model="org/model:7b*[q4]"))
    assert not fnmatch.fnmatchcase(other, entry_pattern(model="org/model:7b*[q4]"))
    # A tenant label matches its namespaces and longer labels it is a prefix of (the 12-hex metric label
    # selects the full 24-hex tenant), never an unrelated tenant.
    assert fnmatch.fnmatchcase(key, entry_pattern(tenant="key-abc"))
    assert fnmatch.fnmatchcase(other, entry_pattern(tenant="key-abc"))
    assert not fnmatch.fnmatchcase(other, entry_pattern(tenant="key-abd"))
    assert not fnmatch.fnmatchcase(key, entry_pattern(model="other", tenant="key-abc"))


def test_cache_config_is_validated_with_paths() -> None:
    raw = {
        "backends": [{"name": "b", "plugin": "fake", "model": "m", "url": "http://127.0.0.1:1"}],
        "routes": [{"model": "m", "backends": ["b"], "cache": {"mode": "sometimes", "ttl_s": 0}}],
        "cache": {"store": "redis", "budget_ms": 0},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    problems = "\n".join(caught.value.problems)
    assert "routes[0].cache.mode" in problems and "deterministic" in problems
    assert "cache.store: 'redis' needs a redis section" in problems
    assert "cache.budget_ms: must be positive" in problems
    raw["routes"][0]["cache"] = {"ttl_s": 0}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    assert "routes[0].cache.ttl_s: must be positive" in "\n".join(caught.value.problems)
