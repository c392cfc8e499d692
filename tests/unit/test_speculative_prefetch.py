"""prefetch: items in order, fetched ahead; errors re-raised in order; leaving early cleans the source up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from gateway.speculative.prefetch import prefetch


async def test_items_arrive_in_order_and_the_source_runs_ahead() -> None:
    produced: list[int] = []

    async def source() -> AsyncIterator[int]:
        for i in range(5):
            produced.append(i)
            yield i

    async with aclosing(prefetch(source(), depth=2)) as items:
        first = await anext(items)
        await asyncio.sleep(0.01)  # the task fills the queue meanwhile
        assert first == 0 and len(produced) >= 3
        assert [first, *[i async for i in items]] == [0, 1, 2, 3, 4]


async def test_an_error_is_raised_after_the_items_before_it() -> None:
    async def source() -> AsyncIterator[int]:
        yield 1
        raise ValueError("boom")

    seen = []
    with pytest.raises(ValueError, match="boom"):
        async for item in prefetch(source()):
            seen.append(item)
    assert seen == [1]


async def test_leaving_early_cancels_the_source_and_runs_its_clean_up() -> None:
    cleaned = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
                await asyncio.sleep(0)
        finally:
            cleaned.set()

    async with aclosing(prefetch(source())) as items:
        assert await anext(items) == 0
    assert cleaned.is_set()
