"""Starts a child server process, waits until it is healthy, restarts it if it dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("gateway.llamacpp")


class LaunchFailed(Exception):
    """The server process exited or stayed unhealthy through its start-up window."""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One supervised server process.

    `probe` says whether the server is ready; it is injected so the supervisor can be tested
    without a model, and `sleep` so backoff needs no real waiting in tests.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        probe: Callable[[], Awaitable[bool]],
        *,
        startup_timeout_s: float = 120.0,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self.argv = argv
        self._probe = probe
        self._startup_timeout_s = startup_timeout_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0
        fd, log_name = tempfile.mkstemp(prefix=f"gateway-{name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process and self._process.returncode is None else None

    async def _spawn(self) -> None:
        with self.log_path.open("ab") as sink:
            self._process = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True
            )

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_timeout_s
        process = self._process
        assert process is not None
        while loop.time() < deadline:
            if process.returncode is not None:
                raise LaunchFailed(
                    f"{self.name}: server exited with code {process.returncode} during start-up; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if await self._probe():
                return
            await asyncio.sleep(0.1)
        raise LaunchFailed(
            f"{self.name}: server not healthy after {self._startup_timeout_s:g}s; "
            f"log {self.log_path}:\n{_tail(self.log_path)}"
        )

    async def start(self) -> None:
        """Spawn and wait for health; raises `LaunchFailed` with the log's tail on failure."""
        self._stopping = False
        await self._spawn()
        try:
            await self._wait_ready()
        except BaseException:
            await self._terminate()
            raise
        log.info("%s: server ready (pid %s)", self.name, self.pid)
        self._watcher = asyncio.create_task(self._watch(), name=f"supervise-{self.name}")

    async def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            log.warning("%s: server exited with code %s; restarting in %.0fs", self.name, code, backoff)
            await self._sleep(backoff)
            if self._stopping:
                return
            try:
                await self._spawn()
                await self._wait_ready()
            except LaunchFailed as err:
                log.error("%s: restart failed: %s", self.name, err)
                # A child that is up but never healthy must go, or the loop would wait on it forever.
                await self._terminate()
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            self.restarts += 1
            backoff = 1.0
            log.info("%s: server restarted (pid %s)", self.name, self.pid)

    async def _terminate(self, grace_s: float = 5.0) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    async def stop(self) -> None:
        """Stop supervising and end the process (SIGTERM, then SIGKILL after a grace period)."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._terminate()
        self.log_path.unlink(missing_ok=True)
