"""`InProcessLedger` and `InProcessJournal`: the reference behaviour the Redis stores must match
(once-only feedback per request and tenant, TTL and bound; history gap and trim, first stop wins)."""

from __future__ import annotations

from gateway.experiments.journal import InProcessJournal
from gateway.experiments.ledger import InProcessLedger, Taken
from gateway.experiments.timeline import Estimate, HistoryPoint, StopState


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def point(at: float) -> HistoryPoint:
    return HistoryPoint(at=at, metric="score", arms={"cand": Estimate(10, 12, 0.5, None, 1.0)})


async def test_take_is_once_only() -> None:
    ledger = InProcessLedger(ttl_s=60)
    ledger.remember("r1", "t1", "exp", "cand")
    assert await ledger.take("r1", "t1") == Taken(found=("exp", "cand"), already_used=False)
    assert await ledger.take("r1", "t1") == Taken(found=None, already_used=True)
    assert await ledger.take("r1", "t1") == Taken(already_used=True)
    assert await ledger.take("nobody", "t1") == Taken(found=None, already_used=False)


async def test_tenants_do_not_see_each_others_requests() -> None:
    ledger = InProcessLedger(ttl_s=60)
    ledger.remember("r1", "t1", "exp", "cand")
    ledger.remember("b:c", "a", "exp", "control")
    assert await ledger.take("r1", "t2") == Taken()
    assert await ledger.take("c", "a:b") == Taken()  # ':' in names cannot make two keys meet
    assert await ledger.take("r1", "t1") == Taken(found=("exp", "cand"))  # t2's attempt did not use it
    assert await ledger.take("b:c", "a") == Taken(found=("exp", "control"))


async def test_entries_and_used_markers_expire() -> None:
    clock = FakeClock()
    ledger = InProcessLedger(ttl_s=10, clock=clock)
    ledger.remember("fresh", "t", "exp", "a")
    ledger.remember("taken", "t", "exp", "b")
    assert (await ledger.take("taken", "t")).found == ("exp", "b")
    clock.now += 9.9
    assert await ledger.take("taken", "t") == Taken(already_used=True)
    ledger.remember("later", "t", "exp", "c")
    clock.now += 0.2
    assert await ledger.take("fresh", "t") == Taken()
    assert await ledger.take("taken", "t") == Taken()  # the marker went with the entry
    assert await ledger.take("later", "t") == Taken(found=("exp", "c"))
    assert len(ledger) == 1  # only "later" (its marker) is still held


async def test_bound_evicts_the_oldest() -> None:
    ledger = InProcessLedger(ttl_s=60, max_entries=3)
    for i in range(5):
        ledger.remember(f"r{i}", "t", "exp", f"arm{i}")
    assert len(ledger) == 3
    assert await ledger.take("r0", "t") == Taken()
    assert await ledger.take("r1", "t") == Taken()
    for i in (2, 3, 4):
        assert await ledger.take(f"r{i}", "t") == Taken(found=("exp", f"arm{i}"))


async def test_remember_again_does_not_revive_a_used_entry() -> None:
    ledger = InProcessLedger(ttl_s=60)
    ledger.remember("r", "t", "exp", "a")
    assert (await ledger.take("r", "t")).found == ("exp", "a")
    ledger.remember("r", "t", "exp", "b")
    assert await ledger.take("r", "t") == Taken(already_used=True)


async def test_history_keeps_one_point_per_gap_and_trims() -> None:
    journal = InProcessJournal()
    assert await journal.history("exp") == []
    assert await journal.append("exp", point(100.0), min_gap_s=5)
    assert not await journal.append("exp", point(104.9), min_gap_s=5)
    assert not await journal.append("exp", point(90.0), min_gap_s=5)  # older than the last: never reorders
    assert await journal.append("exp", point(105.0), min_gap_s=5)
    assert [p.at for p in await journal.history("exp")] == [100.0, 105.0]
    for i in range(2, 10):
        assert await journal.append("exp", point(100.0 + 5 * i), min_gap_s=5, max_points=4)
    assert [p.at for p in await journal.history("exp")] == [130.0, 135.0, 140.0, 145.0]  # newest, oldest first
    assert (await journal.history("exp"))[-1] == point(145.0)
    assert await journal.history("other") == []


async def test_first_stop_wins_and_reset_forgets() -> None:
    journal = InProcessJournal()
    assert await journal.stopped("exp") is None
    first = StopState(at=1.0, reason="candidate better", serve="cand")
    second = StopState(at=2.0, reason="guardrail", serve="control")
    assert await journal.stop("exp", first) == first
    assert await journal.stop("exp", second) == first
    assert await journal.stopped("exp") == first
    assert await journal.stopped("other") is None
    await journal.append("exp", point(1.0), min_gap_s=1)
    await journal.reset("exp")
    assert await journal.stopped("exp") is None
    assert await journal.history("exp") == []
    assert await journal.stop("exp", second) == second
