"""The tenant a request is accounted to, as a metric label.

Until API keys are mapped to named tenants, a tenant is the key itself, hashed: the label
never shows a key, and two requests with one key always land on one label. The number of
distinct labels is capped, since keys come from clients.
"""

from __future__ import annotations

import hashlib

_MAX_TENANTS = 1000


class TenantNamer:
    """Maps an `Authorization` header to a stable, key-free label."""

    def __init__(self, max_tenants: int = _MAX_TENANTS) -> None:
        self._names: dict[bytes, str] = {}
        self._max = max_tenants

    def __call__(self, authorization: bytes | None) -> str:
        if not authorization:
            return "anonymous"
        name = self._names.get(authorization)
        if name is None:
            if len(self._names) >= self._max:
                return "other"
            key = authorization.removeprefix(b"Bearer ").strip()
            name = self._names[authorization] = "key-" + hashlib.sha256(key).hexdigest()[:12]
        return name


def cache_tenant(authorization: bytes | None) -> str:
    """The caller's identity in cache keys: exact, never capped or shared like the metric label.

    It starts with the metric label (`key-` and the same 12 hex digits), so an operator can
    delete a tenant's entries by the name the metrics show; 96 bits in all keep distinct keys apart.
    """
    if not authorization:
        return "anonymous"
    key = authorization.removeprefix(b"Bearer ").strip()
    return "key-" + hashlib.sha256(key).hexdigest()[:24]
