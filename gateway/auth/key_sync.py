"""Keeps a `KeyRing` up to date with the keys in Redis (`auth.store: redis`)."""

from __future__ import annotations

import logging

from gateway.auth.key_store import RedisKeyStore
from gateway.auth.keys import KeyRing
from gateway.auth.settings import AuthConfig
from gateway.config import RedisConfig
from gateway.redis_connect import REDIS_ERRORS
from gateway.routing.periodic import PeriodicTask

log = logging.getLogger("gateway.auth")


class KeySync:
    """Reads the stored keys into the key ring at start and every `auth.refresh_s`. While Redis is
    away the last set read stays in force (one WARNING when it goes, one INFO when it is back)."""

    def __init__(self, ring: KeyRing, auth: AuthConfig, redis: RedisConfig) -> None:
        self.ring = ring
        self.store = RedisKeyStore(redis)
        self._task = PeriodicTask("auth-keys", self.refresh, auth.refresh_s)
        self._failing = False
        self.loaded = 0

    async def refresh(self) -> None:
        try:
            stored = await self.store.load()
        except REDIS_ERRORS as err:
            if not self._failing:
                log.warning("API keys in Redis could not be read (%s); the last keys read stay in force", err)
            self._failing = True
            return
        if self._failing:
            log.info("API keys in Redis readable again (%d key(s))", len(stored))
        self._failing = False
        self.loaded = len(stored)
        self.ring.use_stored(stored)

    async def start(self) -> None:
        await self.refresh()
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def aclose(self) -> None:
        await self._task.stop()
        await self.store.aclose()
