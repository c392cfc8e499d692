"""Per request: whether the response cache is read, written, for how long, and under which key.

The route's `cache:` section decides whether a request is cacheable at all; within that the
client steers with `Cache-Control: no-cache` (do not answer from the cache), `no-store` (do not
keep this answer), `x-gateway-cache-ttl: SECONDS` (keep it this long instead of the route's
`ttl_s`; 0 keeps nothing) and `x-gateway-cache-namespace: NAME` (a separate cache space within
the caller's own, e.g. per end user or per test run).
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote

from gateway.cache.key import CacheKey, cache_key, is_deterministic
from gateway.cache.settings import RouteCacheConfig
from gateway.errors import bad_request

__all__ = ["CacheHeaders", "CachePlan", "entry_pattern", "plan_request", "store_key"]

_ENTRY_PREFIX = "e/"
_MAX_NAMESPACE = 128


class CacheHeaders:
    """The request headers that steer the cache, as sent (parsed lazily: most requests send none)."""

    __slots__ = ("cache_control", "namespace", "ttl")

    def __init__(self) -> None:
        self.cache_control: bytes | None = None
        self.ttl: bytes | None = None
        self.namespace: bytes | None = None

    def directives(self) -> frozenset[str]:
        if not self.cache_control:
            return frozenset()
        text = self.cache_control.decode("latin-1").lower()
        return frozenset(part.split("=", 1)[0].strip() for part in text.split(","))

    def ttl_s(self) -> float | None:
        """The client's TTL, or None; a 400 naming the header when it is not a non-negative number."""
        if self.ttl is None:
            return None
        try:
            value = float(self.ttl.decode("latin-1").strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise bad_request(
                f"Invalid value for header 'x-gateway-cache-ttl': {self.ttl.decode('latin-1')!r} is not a "
                "non-negative number of seconds", param="x-gateway-cache-ttl", code="invalid_value",
            )
        return value

    def namespace_text(self) -> str:
        if self.namespace is None:
            return ""
        text = self.namespace.decode("latin-1").strip()
        if len(text) > _MAX_NAMESPACE or not text.isprintable():
            raise bad_request(
                f"Invalid value for header 'x-gateway-cache-namespace': at most {_MAX_NAMESPACE} printable "
                "characters", param="x-gateway-cache-namespace", code="invalid_value",
            )
        return text


class CachePlan:
    """What the cache does for one request."""

    __slots__ = ("key", "read", "store", "ttl_s", "write")

    def __init__(self, key: CacheKey, *, read: bool, write: bool, ttl_s: float) -> None:
        self.key = key
        self.read = read
        self.write = write
        self.ttl_s = ttl_s
        self.store = store_key(key)

    @property
    def digest(self) -> str:
        return self.key.digest


def plan_request(
    config: RouteCacheConfig, kind: str, key_model: str, body: dict[str, Any], tenant: str, headers: CacheHeaders,
    *, variant: str | None = None,
) -> CachePlan | None:
    """The request's plan, or None when the cache stays out of it (`x-gateway-cache: bypass`).

    `key_model` is the route's model, or the client's for a glob route (one glob serves many
    models, which must not share entries); `tenant` is the caller's identity (never shared);
    `variant` (an experiment's `name=arm`) gives each arm entries of its own, within the tenant's.
    Raises a 400 `GatewayError` for a malformed cache header.
    """
    ttl = headers.ttl_s()
    namespace = headers.namespace_text()
    if config.mode == "off":
        return None
    if config.mode == "deterministic" and kind != "embedding" and not is_deterministic(body):
        return None
    directives = headers.directives()
    read = "no-cache" not in directives
    ttl_s = config.ttl_s if ttl is None else ttl
    write = "no-store" not in directives and ttl_s > 0
    if not read and not write:
        return None
    if namespace:
        tenant = f"{tenant}~{namespace}"
    if variant:
        tenant = f"{tenant}^{variant}"
    return CachePlan(cache_key(kind, key_model, body, tenant), read=read, write=write, ttl_s=ttl_s)


def _segment(text: str) -> str:
    # Everything but [A-Za-z0-9._-] percent-encoded: no '/' to confuse the layout and no glob
    # character, so the same pattern works for Redis MATCH and fnmatch.
    return quote(text, safe="").replace("*", "%2A")


def store_key(key: CacheKey) -> str:
    """Where an entry lives in a store: `e/<model>/<tenant>/{<digest>}`, so deletion can match either part.
    The braces make the digest a Redis Cluster hash tag: the entry shares a slot with its flight's keys."""
    return f"{_ENTRY_PREFIX}{_segment(key.model)}/{_segment(key.tenant)}/{{{key.digest}}}"


def entry_pattern(model: str | None = None, tenant: str | None = None) -> str:
    """A glob over store keys: every entry, one model's, one tenant's (its label matches as a prefix,
    covering its namespaces), or both."""
    model_part = _segment(model) if model is not None else "*"
    tenant_part = _segment(tenant) + "*" if tenant is not None else "*"
    return f"{_ENTRY_PREFIX}{model_part}/{tenant_part}/*"


