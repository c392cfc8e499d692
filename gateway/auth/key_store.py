"""API keys kept in Redis (`auth.store: redis`): created and revoked through the admin API while the
gateway runs, seen by every replica within `auth.refresh_s`.

Redis holds what the config would: a digest, never the key. One hash maps each digest to the key's
record (name, tenant, models, revoked) and one maps each name to its digest, so a key can be revoked
by name; both sit under the `{auth}` hash tag so a script can update them together on a Redis Cluster.
Replicas read the whole set on start and every `refresh_s` into memory: checking a key stays a dict
lookup on the request path, and a Redis outage keeps the last set it read (keys go on working,
revocations made meanwhile wait for Redis to come back).
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import msgspec

from gateway.auth.keys import key_digest
from gateway.config import RedisConfig
from gateway.redis_connect import connect_redis

log = logging.getLogger("gateway.auth")

DIGESTS = "gateway:{auth}:keys"  # digest -> StoredKey (JSON)
NAMES = "gateway:{auth}:names"  # name -> digest
REVOKED = "gateway:{auth}:revoked"  # digest -> when it was revoked (a key's record itself never changes)

# Adds a key unless its name is taken: both hashes in one step, so no replica sees half a key.
_ADD = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""
# Marks a key revoked by name; 0 when there is no such key.
_REVOKE = """
local digest = redis.call('HGET', KEYS[2], ARGV[1])
if not digest then return 0 end
redis.call('HSET', KEYS[3], digest, ARGV[2])
return 1
"""


class StoredKey(msgspec.Struct, kw_only=True):
    """One key's record in Redis (the digest is the hash field it is stored under)."""

    name: str
    tenant: str
    models: list[str]
    revoked: bool = False
    created: float = 0.0


class KeyExists(Exception):
    """A key with this name exists already (names identify keys in logs and revocations)."""


class RedisKeyStore:
    """Adds, revokes and lists the keys in Redis."""

    def __init__(self, config: RedisConfig, *, socket_timeout_s: float = 2.0) -> None:
        self._redis: Any = connect_redis(config, socket_timeout_s=socket_timeout_s)
        self._add = self._redis.register_script(_ADD)
        self._revoke = self._redis.register_script(_REVOKE)

    async def add(self, name: str, tenant: str, models: list[str]) -> tuple[str, StoredKey]:
        """A new random key and its record; `KeyExists` when the name is taken."""
        key = "gw-" + secrets.token_urlsafe(32)
        record = StoredKey(name=name, tenant=tenant, models=models, created=time.time())
        added = await self._add(keys=[DIGESTS, NAMES], args=[name, key_digest(key), msgspec.json.encode(record)])
        if not added:
            raise KeyExists(name)
        return key, record

    async def revoke(self, name: str) -> bool:
        """Mark the named key revoked; False when there is none."""
        return bool(await self._revoke(keys=[DIGESTS, NAMES, REVOKED], args=[name, repr(time.time())]))

    async def load(self) -> dict[str, StoredKey]:
        """Every key, by digest (records that do not decode are skipped and logged)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(DIGESTS)
            pipe.hkeys(REVOKED)
            raw, revoked = await pipe.execute()
        gone = {digest.decode() for digest in revoked}
        keys: dict[str, StoredKey] = {}
        for field, record in raw.items():
            try:
                digest = field.decode()
                stored = msgspec.json.decode(record, type=StoredKey)
            except (msgspec.DecodeError, UnicodeDecodeError):
                log.warning("skipping a key record in Redis that does not decode (%s)", DIGESTS)
                continue
            stored.revoked = digest in gone
            keys[digest] = stored
        return keys

    async def aclose(self) -> None:
        await self._redis.aclose()
