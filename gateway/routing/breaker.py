"""Circuit breakers per backend: closed, open, half-open with a single probe.

A breaker opens after `failures` consecutive failed attempts, or at once on a hard failure
(connection refused). While open it admits nothing; once its window has passed it is
half-open and admits one probe request at a time. A successful attempt closes it from any
state; a failure while half-open reopens it for twice as long (up to `max_open_s`). Failures
of requests that were already in flight when it opened land while it is open and change
nothing, so a dead backend costs one failed attempt per window, not one per request.

`BreakerRecord` holds the transitions for one backend. The in-process `LocalBreakers` and the
Redis mirror in `gateway/routing/shared.py` both use it, and the Lua scripts in
`gateway/routing/shared_lua.py` apply exactly the same rules inside Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.config import BreakerConfig
from gateway.routing.interfaces import Admission, BreakerSnapshot, BreakerStateName

Clock = Callable[[], float]

# A probe claim lapses after this long, so a replica that crashed (or a request that never
# reported back) cannot keep a half-open breaker shut for good.
PROBE_LEASE_S = 30.0


class BreakerRecord:
    """One backend's breaker as plain fields; every state is derived from them and a clock time.

    `opened` is set from the moment the breaker opens until a success closes it; whether it is
    open or half-open depends only on whether `open_until` has passed.
    """

    __slots__ = ("failures", "open_s", "open_until", "opened", "probe_until")

    def __init__(
        self, *, opened: bool = False, failures: int = 0, open_until: float = 0.0, open_s: float = 0.0,
        probe_until: float = 0.0,
    ) -> None:
        self.opened = opened
        self.failures = failures
        self.open_until = open_until
        self.open_s = open_s
        self.probe_until = probe_until

    def state(self, now: float) -> BreakerStateName:
        if not self.opened:
            return "closed"
        return "open" if now < self.open_until else "half_open"

    def probing(self, now: float) -> bool:
        return self.opened and now < self.probe_until

    def admission(self, now: float) -> Admission:
        state = self.state(now)
        if state == "closed":
            return "yes"
        if state == "open" or self.probing(now):
            return "no"
        return "probe"

    def claim_probe(self, now: float, lease_s: float) -> bool:
        """True when a request may go: the breaker is closed, or this call won the probe."""
        if not self.opened:
            return True
        if now < self.open_until or self.probing(now):
            return False
        self.probe_until = now + lease_s
        return True

    def release_probe(self) -> None:
        """The probe's request ended with no outcome: the next request may probe."""
        self.probe_until = 0.0

    def record(self, now: float, *, ok: bool, hard: bool, config: BreakerConfig) -> None:
        if ok:
            self.opened = False
            self.failures = 0
            self.open_until = 0.0
            self.open_s = config.open_s
            self.probe_until = 0.0
            return
        self.failures += 1
        if not self.opened:
            if hard or self.failures >= max(1, config.failures):
                self.opened = True
                self.open_s = config.open_s
                self.open_until = now + self.open_s
                self.probe_until = 0.0
        elif now >= self.open_until:
            # Half-open: the probe failed (or a straggler did, which says the same).
            self.open_s = min(self.open_s * 2.0, config.max_open_s)
            self.open_until = now + self.open_s
            self.probe_until = 0.0
        # Otherwise still open: the failure of a request sent before it opened; the window stays.

    def snapshot(self, now: float) -> BreakerSnapshot:
        return BreakerSnapshot(
            state=self.state(now),
            failures=self.failures,
            open_until=self.open_until,
            open_s=self.open_s,
            probing=self.probing(now),
        )


class LocalBreakers:
    """`Breakers` for one process; a backend never recorded is closed."""

    def __init__(
        self, config: BreakerConfig, clock: Clock = time.time, *, probe_lease_s: float = PROBE_LEASE_S
    ) -> None:
        self.config = config
        self.clock = clock
        self.probe_lease_s = probe_lease_s
        self._records: dict[str, BreakerRecord] = {}

    def _record(self, backend: str) -> BreakerRecord:
        record = self._records.get(backend)
        if record is None:
            record = self._records[backend] = BreakerRecord()
        return record

    def snapshot(self, backend: str) -> BreakerSnapshot:
        record = self._records.get(backend)
        return record.snapshot(self.clock()) if record is not None else BreakerSnapshot()

    def admission(self, backend: str) -> Admission:
        record = self._records.get(backend)
        return record.admission(self.clock()) if record is not None else "yes"

    async def acquire_probe(self, backend: str) -> bool:
        record = self._records.get(backend)
        return record.claim_probe(self.clock(), self.probe_lease_s) if record is not None else True

    def release_probe(self, backend: str) -> None:
        record = self._records.get(backend)
        if record is not None:
            record.release_probe()

    def record(self, backend: str, *, ok: bool, hard: bool = False) -> None:
        if ok and backend not in self._records:
            return  # a backend that never failed needs no record to stay closed
        self._record(backend).record(self.clock(), ok=ok, hard=hard, config=self.config)
