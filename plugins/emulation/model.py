"""A deterministic fake model: whitespace tokens, a fixed reply, real stop and length handling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "eos"]


@dataclass(frozen=True, slots=True)
class Generation:
    """What the fake model produced for one request."""

    tokens: list[str]  # each already carries its leading space, so "".join(tokens) is the text
    finish: FinishReason  # "eos" (natural end), "length" (max tokens) or "stop" (a stop string)
    prompt_tokens: int
    stop_sequence: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def count_tokens(text: str) -> int:
    """Whitespace words: the unit the fake model counts in, prompts and outputs alike."""
    return len(text.split())


class FakeModel:
    """Answers every prompt with the same reply, cut by max tokens or by stop strings."""

    def __init__(self, reply: str) -> None:
        self._words = reply.split() or ["hello"]

    def generate(self, prompt: str, *, max_tokens: int | None, stop: list[str] | None = None,
                 prefill: str = "") -> Generation:
        """The reply to `prompt`; with a `prefill` (the start of the answer, already written), its
        continuation: the reply from the word after the prefill's last, as a greedy model would."""
        prompt_tokens = count_tokens(prompt)
        natural = len(self._words)
        start = count_tokens(prefill)
        left = max(natural - start, 0)  # words of the natural reply after the prefill
        limit = left if max_tokens is None else max_tokens
        # Tokens carry their leading space, so the first one needs it after a prefill ending in a word.
        glued = bool(prefill) and not prefill[-1].isspace()
        out: list[str] = []
        text = ""
        for i in range(limit):
            word = self._words[(start + i) % natural]
            token = word if i == 0 and not glued else " " + word
            candidate = text + token
            for s in stop or ():
                at = candidate.find(s)
                if s and at >= 0:
                    kept = candidate[:at][len(text):]
                    if kept:
                        out.append(kept)
                    return Generation(out, "stop", prompt_tokens, s)
            out.append(token)
            text = candidate
        finish: FinishReason = "length" if max_tokens is not None and len(out) >= max_tokens else "eos"
        return Generation(out, finish, prompt_tokens)
