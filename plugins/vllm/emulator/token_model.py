"""A deterministic, input-grounded greedy "model" over token ids, for vLLM's token-id prompts.

It stands in for a GPU target in the speculative-decoding benchmark (issue 7): like a model asked to
edit, summarize or refactor a given text, it mostly copies its input and now and then departs from it.
The next token is a pure function of the token-id prefix, so one batched-prefix verify call and plain
token-by-token decoding agree exactly (what gateway speculation must reproduce). The rule, in order:

1. an *edit* position (a hash of the last few tokens under `edit_rate`): a hash-derived token, so the
   copy drifts like an edit would (an inserted token; copying resumes right after it);
2. the continuation of the longest (n <= 8), then most recent, earlier occurrence of the prefix's
   suffix, the model's own edit tokens left out of that suffix (so the copy resumes right after an
   edit); a copy starts from a 1-gram match (an instruction ending with the document's opening token);
3. otherwise a hash-derived token (open-ended text: nothing to copy).

A copied token below `SPECIAL_IDS` (the end-of-document marker of the source) becomes `eos_token_id`:
the copy reached the end of its source. Hash-derived tokens never fall below `SPECIAL_IDS`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

import msgspec

MAX_N = 8
# Control ids (BOS/EOS/markers) live below this; generated and edited tokens never do.
SPECIAL_IDS = 10
VOCAB_SIZE = 32_000
# Scanning every earlier occurrence of the last token would make a long repetitive sequence quadratic;
# the most recent ones are where a copy continues anyway.
_MAX_CANDIDATES = 64
_EDIT_CONTEXT = 4  # how many trailing tokens an edit decision hashes
_MASK64 = (1 << 64) - 1
_EDIT_SCALE = 1 << 20


class TokenKnobs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The token-id model's behaviour and its GPU-like costs, changed with `POST /__emulator/knobs`.

    Costs apply to token-id prompts only (text prompts keep ttft_ms/tpot_ms): `rtt_ms` per call,
    `decode_ms` per generated token of a sequence (one forward step), `verify_token_ms` per extra
    sequence of a batched call (what batching the k+1 prefixes of a verify costs on a GPU).
    """

    edit_rate: float = 0.1
    eos_token_id: int = 2
    rtt_ms: float = 0.0
    decode_ms: float = 0.0
    verify_token_ms: float = 0.0


def _hash(tokens: Sequence[int]) -> int:
    """FNV-1a over the ids, then a splitmix64 finalizer so every bit is usable (no RNG: reproducible)."""
    h = 0xCBF29CE484222325
    for token in tokens:
        h = ((h ^ (token & _MASK64)) * 0x100000001B3) & _MASK64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 31)


class TokenSequence:
    """A token-id sequence indexed for `next_token(end)` on any prefix `tokens[:end]` without
    re-indexing, so the k+1 prefixes of a batched verify share one index and a stream appends one
    token at a time: per id, the ascending positions where it occurs, and per position whether the
    token there is an edit (the model's own hash-derived insertion, recognisable from its prefix)."""

    def __init__(self, tokens: Sequence[int], knobs: TokenKnobs) -> None:
        self.knobs = knobs
        self.tokens: list[int] = []
        self.edits: list[bool] = []
        self._positions: dict[int, list[int]] = {}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            at = len(self.tokens)
            edit, generated = self._edit_at(at)
            self.edits.append(edit and token == generated)
            self._positions.setdefault(token, []).append(at)
            self.tokens.append(token)

    def _edit_at(self, end: int) -> tuple[bool, int]:
        """(whether position `end` is an edit position, the hash-derived token for it)."""
        h = _hash(self.tokens[max(0, end - _EDIT_CONTEXT) : end])
        generated = SPECIAL_IDS + (h >> 24) % (VOCAB_SIZE - SPECIAL_IDS)
        return (h & (_EDIT_SCALE - 1)) < self.knobs.edit_rate * _EDIT_SCALE, generated

    def _copy(self, end: int) -> tuple[int, int] | None:
        """(n, continuation) of the longest, then most recent, earlier occurrence of the suffix of
        tokens[:end], or None. The suffix leaves the model's own edits out, so a copy resumes right
        after an inserted token instead of losing its place."""
        seq, edits = self.tokens, self.edits
        suffix: list[int] = []  # most recent first
        last = -1
        j = end - 1
        while j >= 0 and len(suffix) < MAX_N:
            if not edits[j]:
                if last < 0:
                    last = j
                suffix.append(seq[j])
            j -= 1
        if last < 0:
            return None
        candidates = self._positions.get(seq[last], [])
        # Occurrences strictly before the suffix's own last token: their continuation is inside the prefix.
        upto = bisect_left(candidates, last)
        best_n, best_at = 0, -1
        for i in reversed(candidates[max(0, upto - _MAX_CANDIDATES) : upto]):
            n = 1
            while n < len(suffix) and i - n >= 0 and seq[i - n] == suffix[n]:
                n += 1
            if n > best_n:
                best_n, best_at = n, i
                if n == len(suffix):
                    break
        if best_n == 0 or best_at + 1 >= end:
            return None
        return best_n, seq[best_at + 1]

    def next_token(self, end: int | None = None) -> int:
        """The greedy token after tokens[:end] (the whole sequence by default)."""
        end = len(self.tokens) if end is None else end
        edit, generated = self._edit_at(end)
        if edit:
            return generated
        copied = self._copy(end)
        if copied is None:
            return generated
        _, token = copied
        return self.knobs.eos_token_id if token < SPECIAL_IDS else token


def greedy(prompt: Sequence[int], max_tokens: int, knobs: TokenKnobs) -> list[int]:
    """Target-alone greedy decoding: up to `max_tokens` ids, ending right after an EOS."""
    sequence = TokenSequence(prompt, knobs)
    out: list[int] = []
    while len(out) < max_tokens:
        token = sequence.next_token()
        out.append(token)
        if token == knobs.eos_token_id:
            break
        sequence.extend((token,))
    return out
