"""Checking API keys: who is calling, to which tenant it counts, which models it may use.

A presented key is hashed (SHA-256) and looked up by digest, then compared with `hmac.compare_digest`,
so neither the stored material nor the comparison depends on the key in clear. Errors name the key's
`name` at most, never the key; the gateway logs no Authorization header anywhere.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.auth.settings import AuthConfig
from gateway.errors import GatewayError


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An accepted key: its label, its tenant, the route models (globs) it may call."""

    name: str
    tenant: str
    models: tuple[str, ...]

    def allows(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


class StoredKeyLike(Protocol):
    """What the key store keeps per key (see gateway/auth/key_store.py)."""

    name: str
    tenant: str
    models: list[str]
    revoked: bool


def key_digest(key: str | bytes) -> str:
    """The SHA-256 hex digest a config stores for `key`."""
    return hashlib.sha256(key if isinstance(key, bytes) else key.encode()).hexdigest()


def _presented(authorization: bytes | None) -> bytes | None:
    """The key in an `Authorization: Bearer <key>` header (None when there is none)."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not key.strip():
        return None
    return key.strip()


_MISSING = GatewayError(401, "missing API key: send it as 'Authorization: Bearer <key>'", code="invalid_api_key")
_INVALID = GatewayError(401, "invalid API key", code="invalid_api_key")
_NOT_ADMIN = GatewayError(403, "this key may not use the admin API", code="admin_key_required")


class KeyRing:
    """The configured keys (`enabled` False without an `auth` section: everyone is let in)."""

    def __init__(self, config: AuthConfig | None) -> None:
        self.enabled = config is not None
        self._keys: dict[str, tuple[str, ApiKey, bool]] = {}
        self._configured: dict[str, tuple[str, ApiKey, bool]] = {}
        self._admin: tuple[str, ...] = ()
        if config is None:
            return
        for key in config.keys:
            accepted = ApiKey(key.name, key.tenant or key.name, tuple(key.models))
            self._configured[key.sha256] = (key.sha256, accepted, key.revoked)
        self._keys = dict(self._configured)
        self._admin = tuple(config.admin_keys)

    def use_stored(self, stored: Mapping[str, StoredKeyLike]) -> None:
        """Take the keys read from the key store (by digest) beside the configured ones, replacing the
        previous read whole. A configured key wins over a stored one with the same digest or name."""
        names = {entry[1].name for entry in self._configured.values()}
        keys = dict(self._configured)
        for digest, record in stored.items():
            if digest in keys or record.name in names:
                continue
            keys[digest] = (digest, ApiKey(record.name, record.tenant or record.name, tuple(record.models)),
                            record.revoked)
        self._keys = keys  # one assignment: a request sees the old set or the new one, never half

    def names(self) -> set[str]:
        return {entry[1].name for entry in self._keys.values()}

    def configured_names(self) -> set[str]:
        return {entry[1].name for entry in self._configured.values()}

    def describe(self) -> list[dict[str, object]]:
        """Every key's name, tenant, models, revoked flag and source; no key material, not even digests."""
        configured = set(self._configured)
        return sorted(({"name": key.name, "tenant": key.tenant, "models": list(key.models), "revoked": revoked,
                        "source": "config" if digest in configured else "redis"}
                       for digest, key, revoked in self._keys.values()), key=lambda k: str(k["name"]))

    def authenticate(self, authorization: bytes | None) -> ApiKey:
        """The caller's key; a 401 `GatewayError` when it is missing, unknown or revoked."""
        presented = _presented(authorization)
        if presented is None:
            raise _MISSING
        digest = key_digest(presented)
        found = self._keys.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            raise _INVALID
        _, key, revoked = found
        if revoked:
            raise GatewayError(401, f"API key '{key.name}' has been revoked", code="invalid_api_key")
        return key

    def authorize_model(self, key: ApiKey, model: str) -> None:
        """A 403 when `key` may not call route `model`."""
        if not key.allows(model):
            raise GatewayError(403, f"API key '{key.name}' may not use model '{model}'", param="model",
                               code="model_not_allowed")

    def authenticate_admin(self, authorization: bytes | None) -> None:
        """Nothing for an admin key; 401 without a valid key, 403 for an API key that is not an admin's."""
        presented = _presented(authorization)
        if presented is None:
            raise _MISSING
        digest = key_digest(presented)
        if any(hmac.compare_digest(digest, admin) for admin in self._admin):
            return
        if digest in self._keys:
            raise _NOT_ADMIN
        raise _INVALID
