"""Stops work for a client that has gone away.

Once the request body is read, the next ASGI message is `http.disconnect`: the client hung
up (or the server finished the response). Until the response is complete, a hang-up cancels
the request's task, which closes the upstream connection, so a backend stops generating
tokens nobody will read instead of running on until its timeout.
"""

from __future__ import annotations

import asyncio

from gateway.api.asgi_io import Receive


class DisconnectWatch:
    """Cancels the current task if the client disconnects before `finish()`."""

    __slots__ = ("_finished", "_target", "_watcher", "client_gone")

    def __init__(self, receive: Receive) -> None:
        self.client_gone = False
        self._finished = False
        self._target = asyncio.current_task()
        self._watcher = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self._finished and self._target is not None:
            self.client_gone = True
            self._target.cancel()

    def finish(self) -> None:
        """The response is (about to be) complete: a disconnect no longer cancels anything."""
        self._finished = True
        self._watcher.cancel()

    def absorb(self) -> bool:
        """In an `except CancelledError`: True (and the cancel undone) if it was our doing."""
        if not self.client_gone or self._target is None:
            return False
        self._target.uncancel()
        return True
