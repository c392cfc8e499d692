"""Emulated targets and drafters for the speculative-decoding tests: deterministic greedy models over
token-id prefixes, with the failures, ties and early stops a real backend can show."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence

from gateway.speculative.interfaces import DraftFailed, TargetFailed, Verification

NextToken = Callable[[Sequence[int]], int]


def markov_next_token(table: Sequence[int], vocab: int) -> NextToken:
    """A greedy "model" whose next token depends on the last two ids (0 stands in before the start):
    small enough for hypothesis to explore, rich enough to make drafts both right and wrong."""
    assert len(table) == vocab * vocab

    def next_token(prefix: Sequence[int]) -> int:
        last = prefix[-1] % vocab if prefix else 0
        before = prefix[-2] % vocab if len(prefix) > 1 else 0
        return table[before * vocab + last]

    return next_token


class EmulatedTarget:
    """A greedy target built from `next_token(prefix)`.

    `tie_at`: prefix lengths where `verify` reports None (a tie it cannot resolve); its own
    `generate` still picks `next_token`, as target-alone greedy would. `truncate`: `verify` stops its
    answer after the first mismatch, None or EOS, like a backend that returns only the accepted
    prefix (TRT-LLM `draft_input_ids`). `fail_on_call`: the n-th call (1-based, verify or generate)
    raises `TargetFailed`. `eos_ids`: `generate` stops after emitting one.
    """

    name = "emulated-target"

    def __init__(
        self,
        next_token: NextToken,
        *,
        eos_ids: frozenset[int] = frozenset(),
        tie_at: frozenset[int] = frozenset(),
        truncate: bool = False,
        fail_on_call: int | None = None,
    ) -> None:
        self.next_token = next_token
        self.eos_ids = eos_ids
        self.tie_at = tie_at
        self.truncate = truncate
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.verify_calls = 0
        self.generate_calls = 0
        self.generate_limits: list[int] = []

    def greedy(self, prompt: Sequence[int], max_tokens: int) -> list[int]:
        """The target-alone output: the oracle every speculative run must reproduce exactly."""
        sequence = list(prompt)
        output: list[int] = []
        while len(output) < max_tokens:
            token = self.next_token(sequence)
            sequence.append(token)
            output.append(token)
            if token in self.eos_ids:
                break
        return output

    def _count_call(self) -> None:
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise TargetFailed(f"emulated failure on call {self.calls}")

    async def verify(self, committed: Sequence[int], draft: Sequence[int]) -> Verification:
        self.verify_calls += 1
        self._count_call()
        argmax: list[int | None] = []
        for j in range(len(draft) + 1):
            prefix = [*committed, *draft[:j]]
            choice = None if len(prefix) in self.tie_at else self.next_token(prefix)
            argmax.append(choice)
            if self.truncate and (choice is None or choice in self.eos_ids or (j < len(draft) and choice != draft[j])):
                break
        return Verification(argmax=argmax)

    async def generate(self, committed: Sequence[int], max_tokens: int) -> AsyncIterator[int]:
        self.generate_calls += 1
        self.generate_limits.append(max_tokens)
        self._count_call()
        sequence = list(committed)
        for _ in range(max_tokens):
            token = self.next_token(sequence)
            sequence.append(token)
            yield token
            if token in self.eos_ids:
                return


class PerfectDrafter:
    """Always drafts the target's own continuation (EOS included, and past it: it knows no EOS)."""

    name = "perfect"

    def __init__(self, next_token: NextToken) -> None:
        self.next_token = next_token
        self.calls = 0

    async def draft(self, committed: Sequence[int], k: int) -> list[int]:
        self.calls += 1
        sequence = list(committed)
        for _ in range(k):
            sequence.append(self.next_token(sequence))
        return sequence[len(committed):]


class WrongAfterDrafter:
    """Right for the first `m` tokens of every draft, then wrong (the target's token + 1)."""

    name = "wrong-after"

    def __init__(self, next_token: NextToken, m: int, vocab: int) -> None:
        self.next_token = next_token
        self.m = m
        self.vocab = vocab
        self.calls = 0

    async def draft(self, committed: Sequence[int], k: int) -> list[int]:
        self.calls += 1
        sequence = list(committed)
        for i in range(k):
            token = self.next_token(sequence)
            sequence.append(token if i < self.m else (token + 1) % self.vocab)
        return sequence[len(committed):]


class RandomDrafter:
    """Drafts 0..k tokens, each the target's continuation with probability `accuracy`, else random."""

    name = "random"

    def __init__(self, rng: random.Random, vocab: int, next_token: NextToken | None = None, accuracy: float = 0.0):
        self.rng = rng
        self.vocab = vocab
        self.next_token = next_token
        self.accuracy = accuracy
        self.calls = 0

    async def draft(self, committed: Sequence[int], k: int) -> list[int]:
        self.calls += 1
        sequence = list(committed)
        for _ in range(self.rng.randint(0, k)):
            if self.next_token is not None and self.rng.random() < self.accuracy:
                sequence.append(self.next_token(sequence))
            else:
                sequence.append(self.rng.randrange(self.vocab))
        return sequence[len(committed):]


class FailingDrafter:
    """Delegates to `inner`, except that its n-th call (1-based) raises `DraftFailed`."""

    name = "failing"

    def __init__(self, inner: PerfectDrafter | WrongAfterDrafter | RandomDrafter | EmptyDrafter, fail_on_call: int):
        self.inner = inner
        self.fail_on_call = fail_on_call
        self.calls = 0

    async def draft(self, committed: Sequence[int], k: int) -> list[int]:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise DraftFailed(f"emulated draft failure on call {self.calls}")
        return await self.inner.draft(committed, k)


class EmptyDrafter:
    """Never has a guess."""

    name = "empty"

    def __init__(self) -> None:
        self.calls = 0

    async def draft(self, committed: Sequence[int], k: int) -> list[int]:
        self.calls += 1
        return []
