"""A coroutine run every few seconds in the background, stopped cleanly at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class PeriodicTask:
    """Calls `work()` after every `interval_s` (slept with the injected `sleep`) until stopped."""

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[None]],
        interval_s: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self._work = work
        self._interval_s = interval_s
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await self._sleep(self._interval_s)
            await self._work()

    @property
    def running(self) -> bool:
        """Started, and neither stopped nor ended by an escaped exception."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
