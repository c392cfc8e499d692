"""`LocalBreakers`: every transition on a fake clock, one probe per window, doubling, in-flight failures."""

from __future__ import annotations

import pytest

from gateway.config import BreakerConfig
from gateway.routing.breaker import LocalBreakers
from gateway.routing.interfaces import Breakers


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def breakers(clock: FakeClock, failures: int = 3, open_s: float = 5.0, max_open_s: float = 60.0,
             probe_lease_s: float = 30.0) -> LocalBreakers:
    config = BreakerConfig(failures=failures, open_s=open_s, max_open_s=max_open_s)
    return LocalBreakers(config, clock, probe_lease_s=probe_lease_s)


def test_is_a_breakers(clock: FakeClock) -> None:
    implementation: Breakers = breakers(clock)
    assert implementation.admission("b") == "yes"


def test_unknown_backend_is_closed(clock: FakeClock) -> None:
    b = breakers(clock)
    snap = b.snapshot("never-seen")
    assert (snap.state, snap.failures, snap.probing) == ("closed", 0, False)
    assert b.admission("never-seen") == "yes"
    b.record("never-seen", ok=True)
    assert b.snapshot("never-seen").state == "closed"


def test_opens_after_consecutive_failures_only(clock: FakeClock) -> None:
    b = breakers(clock, failures=3)
    b.record("b", ok=False)
    b.record("b", ok=False)
    b.record("b", ok=True)  # a success in between: the count starts over
    b.record("b", ok=False)
    b.record("b", ok=False)
    assert b.snapshot("b").state == "closed"
    assert b.snapshot("b").failures == 2
    assert b.admission("b") == "yes"
    b.record("b", ok=False)
    snap = b.snapshot("b")
    assert snap.state == "open"
    assert snap.failures == 3
    assert snap.open_s == 5.0
    assert snap.open_until == clock.now + 5.0
    assert b.admission("b") == "no"


def test_hard_failure_opens_at_once(clock: FakeClock) -> None:
    b = breakers(clock, failures=3)
    b.record("b", ok=False, hard=True)
    assert b.snapshot("b").state == "open"
    assert b.admission("b") == "no"


def test_half_open_after_the_window_admits_one_probe(clock: FakeClock) -> None:
    b = breakers(clock, failures=1)
    b.record("b", ok=False)
    clock.advance(4.999)
    assert b.admission("b") == "no"
    clock.advance(0.001)
    assert b.snapshot("b").state == "half_open"
    assert b.admission("b") == "probe"


async def test_a_dead_backend_gets_exactly_one_probe_per_window(clock: FakeClock) -> None:
    b = breakers(clock, failures=1, open_s=5.0, max_open_s=60.0)
    b.record("b", ok=False, hard=True)
    attempts = 0
    window = 5.0
    for _ in range(5):
        clock.advance(window)
        # Many requests arrive in the half-open window; each that is admitted as the probe
        # and wins the claim goes to the backend and fails.
        for _ in range(20):
            if b.admission("b") == "probe" and await b.acquire_probe("b"):
                attempts += 1
                assert b.snapshot("b").probing
                assert b.admission("b") == "no"
        assert attempts == 1
        b.record("b", ok=False)  # the probe failed: open again, twice as long
        assert b.snapshot("b").state == "open"
        window = min(window * 2, 60.0)
        assert b.snapshot("b").open_s == window
        attempts = 0


def test_failed_probe_doubles_the_window_up_to_the_cap(clock: FakeClock) -> None:
    b = breakers(clock, failures=1, open_s=5.0, max_open_s=30.0)
    b.record("b", ok=False)
    windows = []
    for _ in range(5):
        clock.now = b.snapshot("b").open_until
        assert b.admission("b") == "probe"
        b.record("b", ok=False)
        snap = b.snapshot("b")
        windows.append(snap.open_s)
        assert snap.open_until == clock.now + snap.open_s
    assert windows == [10.0, 20.0, 30.0, 30.0, 30.0]


def test_success_closes_from_any_state_and_resets_the_window(clock: FakeClock) -> None:
    b = breakers(clock, failures=1, open_s=5.0)
    b.record("b", ok=False)
    clock.advance(5.0)
    b.record("b", ok=False)  # failed probe: 10 s
    assert b.snapshot("b").open_s == 10.0
    clock.advance(10.0)
    b.record("b", ok=True)  # the probe succeeded
    snap = b.snapshot("b")
    assert (snap.state, snap.failures, snap.open_s, snap.probing) == ("closed", 0, 5.0, False)
    assert b.admission("b") == "yes"
    b.record("b", ok=False)  # the next opening starts from the base window again
    assert b.snapshot("b").open_s == 5.0
    b.record("b", ok=True)  # a success while open (a request that was already out) closes too
    assert b.snapshot("b").state == "closed"


def test_failures_of_requests_in_flight_when_it_opened_change_nothing(clock: FakeClock) -> None:
    b = breakers(clock, failures=1, open_s=5.0)
    b.record("b", ok=False)
    opened = b.snapshot("b")
    for _ in range(10):
        clock.advance(0.4)
        b.record("b", ok=False)
        b.record("b", ok=False, hard=True)
    snap = b.snapshot("b")
    assert snap.state == "open"
    assert (snap.open_until, snap.open_s) == (opened.open_until, opened.open_s)
    clock.now = opened.open_until
    assert b.admission("b") == "probe"


async def test_probe_claim_expires_after_its_lease(clock: FakeClock) -> None:
    b = breakers(clock, failures=1, open_s=5.0, probe_lease_s=30.0)
    b.record("b", ok=False)
    clock.advance(5.0)
    assert await b.acquire_probe("b")
    assert not await b.acquire_probe("b")  # someone has it
    clock.advance(29.9)
    assert b.admission("b") == "no"
    assert b.snapshot("b").state == "half_open"
    clock.advance(0.1)  # the prober never reported back
    assert not b.snapshot("b").probing
    assert b.admission("b") == "probe"
    assert await b.acquire_probe("b")


async def test_acquire_probe_while_open_or_closed(clock: FakeClock) -> None:
    b = breakers(clock, failures=1)
    assert await b.acquire_probe("b")  # closed: nothing to claim, the request may go
    b.record("b", ok=False)
    assert not await b.acquire_probe("b")  # open: no probe yet
    assert not b.snapshot("b").probing


def test_breakers_are_per_backend(clock: FakeClock) -> None:
    b = breakers(clock, failures=1)
    b.record("dead", ok=False)
    assert b.admission("dead") == "no"
    assert b.admission("alive") == "yes"
