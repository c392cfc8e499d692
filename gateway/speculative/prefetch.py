"""Run an async iterator ahead of its consumer, so their waits overlap.

The decoder's next round (a draft call and a verify call) and the detokenizing and sending of the
last round's tokens are independent: with the decoder in a task of its own, one round's text goes out
while the target verifies the next. `depth` bounds how far ahead it runs (a consumer that stops early,
at a stop string, wastes at most that many rounds).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


async def prefetch(source: AsyncIterator[T], depth: int = 2) -> AsyncGenerator[T, None]:
    """Yield `source`'s items, fetched up to `depth` ahead by a task; its exceptions re-raised here, in
    order. Leaving early cancels the task, which runs `source`'s own clean-up (its `finally` blocks)."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=depth)

    async def pump() -> None:
        try:
            async for item in source:
                await queue.put(item)
        except Exception as err:  # handed to the consumer, raised where it reads
            await queue.put(_Failure(err))
            return
        await queue.put(_END)

    task = asyncio.create_task(pump())
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
