"""The limiter's Prometheus metrics, registered once per registry.

A config reload builds a new limiter on the same registry (the metrics outlive the state they
describe), so the counters are looked up per registry rather than created by each limiter.
"""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter


class LimitsMetrics:
    """`gateway_limits_refused_total{key,limit}`: requests refused, by API key name and the limit that
    refused (requests, tokens, budget); `gateway_limits_store_errors_total{op}`: store calls that
    failed or were skipped while Redis was away (admission: the request went through unchecked;
    charge: the write is retried)."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, LimitsMetrics] = weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter("gateway_limits_refused", "Requests refused by a per-key limit, by API key name and "
                               "limit (requests, tokens, budget)", ("key", "limit"), registry=registry)
        self.store_errors = Counter("gateway_limits_store_errors", "Limiter store calls that failed or were skipped "
                                    "while Redis was away, by operation (admission: let through unchecked; charge: "
                                    "retried)", ("op",), registry=registry)

    @classmethod
    def of(cls, registry: CollectorRegistry) -> LimitsMetrics:
        """The registry's limiter metrics, created on first use."""
        found = cls._by_registry.get(registry)
        if found is None:
            found = cls._by_registry[registry] = cls(registry)
        return found
