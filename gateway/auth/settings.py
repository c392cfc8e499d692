"""The `auth` section: API keys (stored as SHA-256 digests, never in clear) mapped to tenants and the
models they may use, and the admin keys that open /admin.

```yaml
auth:
  keys:
    - name: team-a                  # a label for logs and errors; never the key
      sha256: 9f86d081884c7d65...   # `gateway keys new --name team-a` prints a key and this line
      tenant: team-a                # metrics and cost are accounted to it (default: name)
      models: ["chat", "coder-*"]   # route models it may call, globs (default: all)
      revoked: false
      limits: {requests_per_minute: 60, tokens_per_minute: 40000, budget_usd: 25, budget_period: month}
  default_limits: {requests_per_minute: 600}  # for keys without `limits` of their own (default: none)
  admin_keys: [3c9909afec25354d...] # digests of keys that may call /admin/*
  store: redis                      # also keys made with POST /admin/keys (default: config only)
```

Without an `auth` section the gateway serves anyone (the embedded default, for a laptop).
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from gateway.limits.settings import LimitsConfig, limits_problems

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class ApiKeyConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One API key, as its SHA-256 hex digest."""

    name: str
    sha256: str
    tenant: str | None = None
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    revoked: bool = False
    # Rates and a spend budget (gateway/limits/settings.py); replaces `auth.default_limits` whole.
    limits: LimitsConfig | None = None


class AuthConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """API keys and admin keys; see the module doc."""

    keys: list[ApiKeyConfig] = msgspec.field(default_factory=list)
    admin_keys: list[str] = msgspec.field(default_factory=list)
    default_limits: LimitsConfig | None = None  # for every key without `limits` of its own
    # config: the keys above only. redis: also keys created with POST /admin/keys (kept in Redis as
    # digests, shared by every replica, revocable while running), re-read every refresh_s.
    store: Literal["config", "redis"] = "config"
    refresh_s: float = 5.0


def auth_problems(config: AuthConfig) -> list[str]:
    """Problems with the `auth` section, each `path: what is wrong` (a digest is never echoed whole)."""
    problems: list[str] = []
    names: set[str] = set()
    digests: set[str] = set()
    for i, key in enumerate(config.keys):
        where = f"auth.keys[{i}]"
        if not key.name.strip():
            problems.append(f"{where}.name: must not be empty")
        elif key.name in names:
            problems.append(f"{where}.name: duplicate key name '{key.name}'")
        names.add(key.name)
        if not _DIGEST.fullmatch(key.sha256):
            problems.append(f"{where}.sha256: not a SHA-256 hex digest (64 lowercase hex digits; "
                            "`gateway keys hash` prints one)")
        elif key.sha256 in digests:
            problems.append(f"{where}.sha256: the same key is listed twice")
        digests.add(key.sha256)
        if not key.models:
            problems.append(f"{where}.models: an empty list allows nothing; leave it out to allow every model")
        if key.limits is not None:
            problems.extend(limits_problems(f"{where}.limits", key.limits))
    if config.default_limits is not None:
        problems.extend(limits_problems("auth.default_limits", config.default_limits))
    for i, digest in enumerate(config.admin_keys):
        if not _DIGEST.fullmatch(digest):
            problems.append(f"auth.admin_keys[{i}]: not a SHA-256 hex digest (64 lowercase hex digits)")
    if not config.keys and not config.admin_keys:
        problems.append("auth: no keys and no admin_keys: leave the section out to serve without keys")
    if config.refresh_s <= 0:
        problems.append("auth.refresh_s: must be positive")
    return problems
