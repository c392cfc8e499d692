"""Cutting the stop word TensorRT-LLM leaves at the end of its output, whole or streamed.

TensorRT-LLM matches stop words on tokens and keeps the matched word as the last text it
returns (tensorrtllm_backend docs/llama.md: `stop_words: ["focuses", "learn"]` answers
"Machine learning is ... allows computers to learn"), while OpenAI never returns the stop
sequence. The same letters earlier in the text ("learning") did not stop it, so only a stop
word at the very end is cut. In a stream the end is not known until the stream ends, so the
tail that could still be a stop word is held back until it cannot.
"""

from __future__ import annotations


def trim_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """(text without a stop word it ends with, that stop word or None); the longest match wins."""
    found: str | None = None
    for stop in stops:
        if stop and text.endswith(stop) and (found is None or len(stop) > len(found)):
            found = stop
    return (text[: len(text) - len(found)], found) if found is not None else (text, None)


def _held_tail(text: str, stops: list[str], longest: int) -> int:
    """Where the longest suffix of `text` that is the start of (or a whole) stop word begins."""
    for start in range(max(0, len(text) - longest), len(text)):
        tail = text[start:]
        if any(s.startswith(tail) for s in stops):
            return start
    return len(text)


class StopTrimmer:
    """Feeds streamed text through; releases all but a tail that may still turn out to be the stop word."""

    __slots__ = ("_longest", "_pending", "_stops", "stopped")

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self._stops), default=0)
        self._pending = ""
        self.stopped: str | None = None

    def feed(self, text: str) -> str:
        """Text that can no longer be part of a final stop word, safe to send now."""
        if not self._stops:
            return text
        self._pending += text
        at = _held_tail(self._pending, self._stops, self._longest)
        released, self._pending = self._pending[:at], self._pending[at:]
        return released

    def flush(self) -> str:
        """At the end of the stream: the held tail, less the stop word if that is what it was."""
        rest, self.stopped = trim_stop(self._pending, self._stops)
        self._pending = ""
        return rest
