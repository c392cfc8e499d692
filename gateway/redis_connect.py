"""One place that turns the `redis` config section into a client.

Every part of the gateway that keeps shared state (routing, cache, experiments, limits) asks
for its client here, so the deployment's Redis topology is a config choice, not code.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.config import RedisConfig


def connect_redis(
    config: RedisConfig, *, decode_responses: bool = False, socket_timeout_s: float = 2.0
) -> aioredis.Redis:
    """A client that never retries or waits on its own (the caller's guard and budget decide)."""
    return aioredis.Redis.from_url(
        config.url, decode_responses=decode_responses, socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s, retry=Retry(NoBackoff(), 0), health_check_interval=0,
    )
