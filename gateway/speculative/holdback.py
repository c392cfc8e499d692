"""Turning verified tokens into client text without ever sending too much (reference §5.5).

Tokens arrive as byte pieces (llama.cpp `/tokenize` with `with_pieces`, or a local detokenizer): a
multi-byte character can be split across tokens, and a stop string can span several tokens. Text
is only sent once it can no longer change or be cut by a stop string.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import NamedTuple


class HoldbackChunk(NamedTuple):
    """Text that is safe to send now, and whether a stop string ended the output (send nothing more)."""

    text: str
    stopped: bool


class TextHoldback:
    """Incremental detokenizer with stop strings, for one streamed choice.

    `feed(piece)` returns the text that can be sent now. Held back are an incomplete UTF-8 sequence at
    the end and the longest suffix that could still grow into one of the stop strings; stop strings are
    matched on decoded text, so one can never start inside a character's bytes.

    The output is cut at the stop occurrence that is completed first (the shortest prefix of the text
    that ends with a stop string); when several stops end there, before the longest one. That cut does
    not depend on how the bytes were split into pieces. Feed one token per call to learn which token
    completed the stop (usage counts tokens up to and including it).

    Invalid bytes decode to U+FFFD, as `bytes.decode(errors="replace")` and the servers do; `finish()`
    emits an incomplete UTF-8 tail the same way, as U+FFFD, since no further byte can complete it.
    """

    def __init__(self, stop: Iterable[str] = ()) -> None:
        # An empty stop string would match everywhere; servers ignore it, so do we.
        self._stops = tuple(dict.fromkeys(s for s in stop if s))
        self._longest = max(map(len, self._stops), default=0)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self._stopped = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def held(self) -> str:
        """Decoded text not sent yet because it may be the start of a stop string."""
        return self._held

    def feed(self, piece: bytes) -> HoldbackChunk:
        """The text safe to send after `piece` (one token's bytes, or several tokens' joined)."""
        if self._stopped:
            return HoldbackChunk("", True)
        return self._advance(self._decoder.decode(piece))

    def finish(self) -> HoldbackChunk:
        """Everything still held back (the generation ended without a stop): an incomplete UTF-8 tail
        becomes U+FFFD. The flushed tail is still checked, since it may complete a stop string."""
        if self._stopped:
            return HoldbackChunk("", True)
        chunk = self._advance(self._decoder.decode(b"", final=True))
        if chunk.stopped:
            return chunk
        text, self._held = chunk.text + self._held, ""
        return HoldbackChunk(text, False)

    def _advance(self, new: str) -> HoldbackChunk:
        pending = self._held + new
        if not self._stops:
            self._held = ""
            return HoldbackChunk(pending, False)
        # No stop lies wholly inside the held text (it was checked when it arrived), and every stop
        # completed now started inside the held text or later, because any suffix that could begin
        # one was held. So searching `pending` alone finds the first completion.
        cut: tuple[int, int] | None = None  # (end, start) of the first-completed stop
        for s in self._stops:
            start = pending.find(s)
            if start >= 0:
                candidate = (start + len(s), start)
                # (end, start) order: the first to complete wins; on an equal end, the longest stop.
                if cut is None or candidate < cut:
                    cut = candidate
        if cut is not None:
            self._stopped, self._held = True, ""
            return HoldbackChunk(pending[: cut[1]], True)
        keep = self._partial_stop_suffix(pending)
        self._held = pending[len(pending) - keep :]
        return HoldbackChunk(pending[: len(pending) - keep], False)

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        for n in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-n:]
            if any(len(s) > n and s.startswith(tail) for s in self._stops):
                return n
        return 0
