"""`ManagedProcess` with `python -c` children and an injected probe: start, start-up failures, restarts, stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from plugins.llamacpp.supervisor import LaunchFailed, ManagedProcess

SERVE_FOREVER = [sys.executable, "-c", "import sys, time; print('child up', flush=True); time.sleep(300)"]


class Probe:
    """Answers the supervisor's readiness checks: False for the first `not_ready` calls, then True."""

    def __init__(self, not_ready: int = 0) -> None:
        self.not_ready = not_ready
        self.calls = 0
        self.ready = True

    async def __call__(self) -> bool:
        self.calls += 1
        return self.ready and self.calls > self.not_ready


async def no_sleep(_seconds: float) -> None:
    await asyncio.sleep(0)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"
    return True


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll: the supervisor offers no event to wait on for a restart or a log line."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.fixture
async def processes() -> AsyncIterator[list[ManagedProcess]]:
    """Every ManagedProcess a test makes is stopped, and its log removed, afterwards."""
    made: list[ManagedProcess] = []
    yield made
    for process in made:
        await process.stop()
        process.log_path.unlink(missing_ok=True)


def managed(
    processes: list[ManagedProcess], argv: list[str], probe: Callable[[], Awaitable[bool]], **kwargs: float
) -> ManagedProcess:
    process = ManagedProcess("test-server", argv, probe, sleep=no_sleep, **kwargs)  # type: ignore[arg-type]
    processes.append(process)
    return process


async def test_start_waits_for_the_probe_then_stop_ends_the_child(processes: list[ManagedProcess]) -> None:
    probe = Probe(not_ready=3)
    process = managed(processes, SERVE_FOREVER, probe, startup_timeout_s=30)
    await process.start()
    assert probe.calls == 4
    pid = process.pid
    assert pid is not None and alive(pid)
    await eventually(lambda: "child up" in process.log_path.read_text())
    await process.stop()
    assert process.pid is None
    assert not alive(pid)
    assert process.restarts == 0


async def test_child_exiting_during_start_up_raises_with_the_log_tail(processes: list[ManagedProcess]) -> None:
    argv = [sys.executable, "-c", "import sys; print('model file is corrupt', file=sys.stderr); sys.exit(3)"]
    process = managed(processes, argv, Probe(not_ready=10**9), startup_timeout_s=30)
    with pytest.raises(LaunchFailed) as info:
        await process.start()
    message = str(info.value)
    assert "exited with code 3" in message
    assert "model file is corrupt" in message
    assert str(process.log_path) in message
    assert process.pid is None


async def test_child_never_ready_is_killed_after_the_start_up_window(processes: list[ManagedProcess]) -> None:
    probe = Probe()
    probe.ready = False
    process = managed(processes, SERVE_FOREVER, probe, startup_timeout_s=0.5)
    with pytest.raises(LaunchFailed) as info:
        await process.start()
    assert "not healthy after 0.5s" in str(info.value)
    assert process.pid is None
    assert probe.calls >= 1


async def test_a_killed_child_is_restarted(processes: list[ManagedProcess]) -> None:
    process = managed(processes, SERVE_FOREVER, Probe(), startup_timeout_s=30)
    await process.start()
    first = process.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await eventually(lambda: process.restarts == 1 and process.pid is not None)
    second = process.pid
    assert second is not None and second != first and alive(second)
    await process.stop()
    assert process.pid is None
    assert not alive(second)
    assert process.restarts == 1


async def test_a_child_that_keeps_dying_on_restart_is_retried_with_backoff(processes: list[ManagedProcess]) -> None:
    sleeps: list[float] = []
    enough = asyncio.Event()

    async def record(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) >= 3:
            enough.set()
            await asyncio.Event().wait()  # park the supervisor here until stop() cancels it
        await asyncio.sleep(0)

    probe = Probe()
    process = ManagedProcess("flaky", SERVE_FOREVER, probe, startup_timeout_s=30, max_backoff_s=3.0, sleep=record)
    processes.append(process)
    await process.start()
    # From now on every restart dies during start-up: the probe never passes and the child exits.
    probe.ready = False
    process.argv = [sys.executable, "-c", "raise SystemExit(5)"]
    first = process.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await asyncio.wait_for(enough.wait(), 20)
    assert sleeps == [1.0, 2.0, 3.0]
    assert process.restarts == 0
    await process.stop()
    assert process.pid is None


async def test_a_restart_that_never_gets_healthy_is_killed_and_retried(processes: list[ManagedProcess]) -> None:
    sleeps: list[float] = []
    second_retry = asyncio.Event()

    async def record(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) >= 2:
            second_retry.set()
            await asyncio.Event().wait()  # park here until stop() cancels the supervisor
        await asyncio.sleep(0)

    probe = Probe()
    process = ManagedProcess("stuck", SERVE_FOREVER, probe, startup_timeout_s=0.2, sleep=record)
    processes.append(process)
    await process.start()
    probe.ready = False  # the restarted server will hang in start-up
    first = process.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(second_retry.wait(), 3)
    hung = process._process.pid if process._process else None
    await process.stop()
    assert hung is None or not alive(hung)
    assert sleeps[:2] == [1.0, 2.0]
