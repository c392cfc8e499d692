"""Stop sequences and finish reasons, TGI's way and OpenAI's way.

TGI stops *after* generating a stop sequence and keeps it in the text (the snapshot
`integration-tests/models/__snapshots__/test_flash_llama/test_flash_llama_all_params.json`
ends its `generated_text` with the stop word "test"); OpenAI leaves it out. TGI names its
finish reasons `eos_token` / `length` / `stop_sequence` (`FinishReason` in router/src/lib.rs);
its Messages API already turns `eos_token` into `stop` but keeps `stop_sequence`.
"""

from __future__ import annotations

_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "stop": "stop", "length": "length"}


def openai_finish_reason(tgi_reason: str) -> str:
    """OpenAI's finish reason for TGI's (`eos_token` and `stop_sequence` are both `stop`)."""
    return _FINISH.get(tgi_reason, tgi_reason)


def stop_list(stop: str | list[str] | None) -> list[str]:
    """OpenAI's `stop` (a string or a list) as the list TGI takes."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return list(stop)


def strip_stop(text: str, stops: list[str]) -> str:
    """`text` without the stop sequence TGI left at its end (the longest that matches)."""
    for stop in sorted(stops, key=len, reverse=True):
        if stop and text.endswith(stop):
            return text[: -len(stop)]
    return text


class StopTrimmer:
    """Streams text without the stop sequence: holds back a tail that could still become one.

    Without holding back, the first characters of a stop sequence would already be with the
    client by the time the last token shows the whole sequence was generated.
    """

    __slots__ = ("_held", "_stops")

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> str:
        """Add generated text; return the part that can no longer be the start of a stop sequence."""
        if not self._stops:
            return text
        buffer = self._held + text
        keep = 0
        for stop in self._stops:
            for size in range(min(len(stop), len(buffer)), keep, -1):
                if buffer.endswith(stop[:size]):
                    keep = size
                    break
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def finish(self, stopped_by_sequence: bool) -> str:
        """The held-back tail at the end of generation, minus the stop sequence if one ended it."""
        held, self._held = self._held, ""
        return strip_stop(held, self._stops) if stopped_by_sequence else held
