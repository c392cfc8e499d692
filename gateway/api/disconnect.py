"""Stops work for a client that has gone away.

Once the request body is read, the next ASGI message is `http.disconnect`: the client hung
up (or the server finished the response). Until the response is complete, a hang-up cancels
the request's task, which closes the upstream connection, so a backend stops generating
tokens nobody will read instead of running on until its timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.api.asgi_io import Receive


class DisconnectWatch:
    """Cancels the current task if the client disconnects before `finish()`."""

    __slots__ = ("_finished", "_hold", "_on_gone", "_target", "_watcher", "client_gone")

    def __init__(self, receive: Receive) -> None:
        self.client_gone = False
        self._finished = False
        self._hold: Callable[[], bool] | None = None
        self._on_gone: Callable[[], None] | None = None
        self._target = asyncio.current_task()
        self._watcher: asyncio.Task[None] | None = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self._finished and self._target is not None:
            if self._hold is not None and self._hold() and self._on_gone is not None:
                self._on_gone()  # others depend on this request's work: let it finish for them
                return
            self.client_gone = True
            self._target.cancel()

    def hold_while(self, hold: Callable[[], bool], on_gone: Callable[[], None]) -> None:
        """If the client hangs up while `hold()` is true, call `on_gone()` instead of cancelling."""
        self._hold = hold
        self._on_gone = on_gone

    def finish(self) -> None:
        """The response is (about to be) complete: a disconnect no longer cancels anything."""
        if self._finished:
            return
        self._finished = True
        if self._watcher is not None:
            self._watcher.cancel()
        # The cancelled watcher's exception holds its frame, which holds this object, which held the
        # task: dropping the reference leaves that cycle nothing to keep alive, so it is freed at once
        # instead of waiting for the garbage collector (a pause every few thousand requests).
        self._watcher = None

    def absorb(self) -> bool:
        """In an `except CancelledError`: True (and the cancel undone) if it was our doing."""
        if not self.client_gone or self._target is None:
            return False
        self._target.uncancel()
        return True
