"""Committed target ids -> client text, incrementally, through the target's own detokenizer.

A token's text depends on its neighbours (SentencePiece's leading space, a character split across
byte tokens), so each step detokenizes a short window that starts a few tokens back and sends the
part of it past what the window's head already produced: the approach of vLLM's incremental
detokenizer, over HTTP. A window whose text ends in U+FFFD holds an incomplete character and waits
for the next tokens. The text then goes through `TextHoldback` for stop strings.

End-of-generation ids (EOS) are never detokenized: target-alone output does not show them either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import NamedTuple

from gateway.speculative.holdback import TextHoldback
from gateway.speculative.interfaces import TokenCodec

_REPLACEMENT = "\ufffd"


class TextStep(NamedTuple):
    """Text safe to send after some tokens; `stopped` when a stop string ended the output there."""

    text: str
    stopped: bool


class IncrementalText:
    """Turns committed ids into text as they arrive (one instance per response)."""

    def __init__(self, codec: TokenCodec, eos_ids: Collection[int], stop: Sequence[str] = ()) -> None:
        self.codec = codec
        self.eos_ids = eos_ids
        self.ids: list[int] = []  # the output so far, EOS excluded
        self._prefix = 0  # the window starts here
        self._read = 0  # text up to here has been produced
        self.holdback = TextHoldback(stop)
        self.stops = tuple(stop)

    async def _window(self, end: int) -> tuple[str, str]:
        """(text of ids[prefix:read], text of ids[prefix:end]) in one round trip."""
        head = self.ids[self._prefix : self._read]
        whole = self.ids[self._prefix : end]
        if not head:
            return "", await self.codec.detokenize(whole)
        head_text, whole_text = await asyncio.gather(self.codec.detokenize(head), self.codec.detokenize(whole))
        return head_text, whole_text

    async def push(self, tokens: Sequence[int]) -> TextStep:
        """The text to send after `tokens` (committed in order); empty while held back."""
        self.ids.extend(t for t in tokens if t not in self.eos_ids)
        if len(self.ids) == self._read:
            return TextStep("", self.holdback.stopped)
        head_text, whole_text = await self._window(len(self.ids))
        if whole_text.endswith(_REPLACEMENT):
            return TextStep("", False)  # an incomplete character: wait for its other bytes
        new = whole_text[len(head_text):]
        self._prefix, self._read = self._read, len(self.ids)
        chunk = self.holdback.feed(new.encode())
        return TextStep(chunk.text, chunk.stopped)

    async def finish(self) -> TextStep:
        """Everything still held back (an incomplete character is sent as U+FFFD, as servers do)."""
        text = ""
        if len(self.ids) > self._read:
            head_text, whole_text = await self._window(len(self.ids))
            text = whole_text[len(head_text):]
            self._prefix, self._read = self._read, len(self.ids)
        if self.holdback.stopped:
            return TextStep("", True)
        chunk = self.holdback.feed(text.encode())
        if chunk.stopped:
            return TextStep(chunk.text, True)
        rest = self.holdback.finish()
        return TextStep(chunk.text + rest.text, rest.stopped)

    async def tokens_through_stop(self, output: Sequence[int]) -> int:
        """How many of `output` (the committed ids) it took to complete the stop string: usage counts
        those, as the target alone would have stopped there. Called once, after `stopped`: a binary
        search, since a prefix that contains a stop string keeps containing it."""
        low, high = 1, len(output)
        while low < high:
            middle = (low + high) // 2
            text = await self.codec.detokenize([t for t in output[:middle] if t not in self.eos_ids])
            if any(stop in text for stop in self.stops if stop):
                high = middle
            else:
                low = middle + 1
        return high
