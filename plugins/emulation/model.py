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

    def generate(self, prompt: str, *, max_tokens: int | None, stop: list[str] | None = None) -> Generation:
        prompt_tokens = count_tokens(prompt)
        natural = len(self._words)
        limit = natural if max_tokens is None else max_tokens
        out: list[str] = []
        text = ""
        for i in range(limit):
            word = self._words[i % natural]
            token = word if i == 0 else " " + word
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
            if max_tokens is None and i == natural - 1:
                break
        finish: FinishReason = "length" if max_tokens is not None and len(out) >= max_tokens else "eos"
        return Generation(out, finish, prompt_tokens)
