"""A time budget and a breaker for Redis calls that the request path makes but must never wait on.

Shared by everything that talks to the response cache's Redis (`RedisStore`, `RemoteFlights`): they use
one connection pool and one breaker, so a Redis that goes away is noticed once, logged once, and then
left alone by all of them until it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis_connect import REDIS_ERRORS, is_unreachable

log = logging.getLogger("gateway.cache")

Clock = Callable[[], float]
T = TypeVar("T")


class RedisCallFailed(Exception):
    """A guarded call did not happen (the breaker is open) or did not succeed within its budget."""


class RedisGuard:
    """Admits, times and books calls to one Redis.

    Every call gives up after `budget_s` (or the budget it names). A connection error opens the
    breaker at once; timeouts open it when `timeouts_to_open` calls in a row run over their budget
    while no call has succeeded for twice the budget. A timeout while other calls are being answered
    is this process's own congestion (its event loop too busy to read a reply in time, a GC pause),
    not Redis: it costs that one call, never the cache for everyone. While open, for `retry_s`
    calls are refused at once without touching the network,
    then one call is let through to probe; its success closes the breaker, its failure keeps it open
    another `retry_s`. One WARNING is logged when Redis goes away and one INFO when it is back.
    `errors` counts failed calls, `skipped_while_down` the calls refused by the open breaker.
    """

    def __init__(
        self,
        describe: Callable[[], str],
        *,
        budget_s: float,
        retry_s: float,
        clock: Clock = time.monotonic,
        what: str = "response cache",
        timeouts_to_open: int = 3,
    ) -> None:
        self.describe = describe
        self.budget_s = budget_s
        self.retry_s = retry_s
        self.clock = clock
        self.what = what
        self.timeouts_to_open = timeouts_to_open
        self.errors = 0
        self._timeouts_in_a_row = 0
        self._last_success = float("-inf")
        self.skipped_while_down = 0
        self._down_since: float | None = None
        self._retry_at = float("-inf")
        self._probing = False

    @property
    def available(self) -> bool:
        """False while the breaker is open (including while a probe is under way)."""
        return self._down_since is None

    async def call(self, op: str, make: Callable[[], Awaitable[T]], *, budget_s: float | None = None) -> T:
        """The result of `make()`, awaited within the budget; raises `RedisCallFailed` when the breaker
        refused the call or it failed (the failure is booked, and logged when it opens the breaker)."""
        probe = self.admit()
        if probe is None:
            raise RedisCallFailed(f"{self.what} at {self.describe()} is unavailable")
        try:
            async with asyncio.timeout(self.budget_s if budget_s is None else budget_s):
                result = await make()
        except REDIS_ERRORS as err:
            self.failed(err, op)
            raise RedisCallFailed(f"{op}: {type(err).__name__}: {err}") from err
        finally:
            if probe:
                self._probing = False
        self.succeeded()
        return result

    def admit(self) -> bool | None:
        """None: skip the call (breaker open); False: an ordinary call; True: this call is the probe
        (the caller must hand it back through `call`'s bookkeeping or `end_probe`)."""
        if self._down_since is None:
            return False
        if self._probing or self.clock() < self._retry_at:
            self.skipped_while_down += 1
            return None
        self._probing = True
        return True

    def end_probe(self) -> None:
        """The probe admitted by `admit` is over (whatever its outcome, booked separately)."""
        self._probing = False

    def failed(self, err: BaseException, op: str) -> None:
        """Book a failed call; a connection error, or the last of a run of timeouts, opens the breaker."""
        self.errors += 1
        if not is_unreachable(err):
            # Redis answered but refused this one command (e.g. a foreign value under our key):
            # Redis itself is fine, so the breaker stays closed.
            log.error("%s %s at %s failed: %s: %s", self.what, op, self.describe(), type(err).__name__, err)
            return
        now = self.clock()
        if isinstance(err, TimeoutError | RedisTimeoutError) and self._down_since is None:
            if now - self._last_success <= 2 * self.budget_s:
                return  # Redis is answering others right now: the delay is ours
            self._timeouts_in_a_row += 1
            if self._timeouts_in_a_row < self.timeouts_to_open:
                return
        self._retry_at = now + self.retry_s
        if self._down_since is not None:
            return
        self._down_since = now
        reason = (f"{self._timeouts_in_a_row} calls in a row without an answer within {self.budget_s * 1000:g} ms"
                  if isinstance(err, TimeoutError) else str(err))
        self._timeouts_in_a_row = 0
        log.warning("%s at %s unavailable (%s: %s); serving without it, retrying every %g s",
                    self.what, self.describe(), type(err).__name__, reason, self.retry_s)

    def succeeded(self) -> None:
        """Book a successful call; closes the breaker if it was open."""
        self._timeouts_in_a_row = 0
        self._last_success = self.clock()
        if self._down_since is None:
            return
        away = self.clock() - self._down_since
        self._down_since = None
        log.info("%s at %s is reachable again after %.1f s (%d calls skipped meanwhile)",
                 self.what, self.describe(), away, self.skipped_while_down)
