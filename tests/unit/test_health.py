"""`HealthMonitor`: checks every backend, records reasons, runs on an injected sleep, stops cleanly."""

from __future__ import annotations

import asyncio

from gateway.routing.health import HealthMonitor, HealthState

from .fakes import make_backend


class StepSleep:
    """An injected sleep: records each interval and lets the monitor loop only when the test says so."""

    def __init__(self) -> None:
        self.intervals: list[float] = []
        self.steps = asyncio.Queue[None]()
        self.waiting = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.intervals.append(seconds)
        self.waiting.set()
        await self.steps.get()
        self.waiting.clear()

    async def step(self) -> None:
        """Let one sleep end and wait until the monitor is back in the next one."""
        await asyncio.wait_for(self.waiting.wait(), 5)
        self.waiting.clear()
        self.steps.put_nowait(None)
        await asyncio.wait_for(self.waiting.wait(), 5)


async def test_check_once_marks_each_backend_with_a_reason() -> None:
    up, down, broken = make_backend("up"), make_backend("down"), make_backend("broken")
    down.healthy = False
    broken.healthy = RuntimeError("plugin bug")
    changes: list[tuple[str, bool]] = []
    state = HealthState()
    monitor = HealthMonitor([up, down, broken], state, 5.0, on_change=lambda n, h: changes.append((n, h)))
    await monitor.check_once()
    assert state.snapshot() == {"up": True, "down": False, "broken": False}
    assert state.reasons == {"down": "health check failed", "broken": "health check raised RuntimeError: plugin bug"}
    assert sorted(changes) == [("broken", False), ("down", False), ("up", True)]


async def test_a_recovered_backend_is_healthy_again() -> None:
    backend = make_backend("a")
    state = HealthState()
    state.mark("a", False, "connection refused")
    await HealthMonitor([backend], state, 1.0).check_once()
    assert state.is_healthy("a") and "a" not in state.reasons


async def test_monitor_runs_on_its_interval_and_stops() -> None:
    backend = make_backend("a")
    sleep = StepSleep()
    state = HealthState()
    monitor = HealthMonitor([backend], state, 2.5, sleep=sleep)
    monitor.start()
    try:
        await asyncio.wait_for(sleep.waiting.wait(), 5)
        assert state.snapshot() == {}  # sleeps first: start-up does its own first check
        backend.healthy = False
        await sleep.step()
        assert state.snapshot() == {"a": False}
        backend.healthy = True
        await sleep.step()
        assert state.snapshot() == {"a": True}
        assert sleep.intervals == [2.5, 2.5, 2.5]
    finally:
        await monitor.stop()
    # Stopped: no more sleeps or checks happen.
    backend.healthy = False
    sleep.steps.put_nowait(None)
    await asyncio.sleep(0.01)
    assert state.is_healthy("a")
    assert len(sleep.intervals) == 3


async def test_stop_without_start_is_harmless() -> None:
    await HealthMonitor([], HealthState(), 1.0).stop()
