"""The pieces of gateway-coordinated speculative decoding, as protocols (see
../shared/reference/speculative-decoding.md for the protocols per backend).

The committed sequence is always target token ids, never re-tokenized text. A round: a `Drafter`
proposes up to k tokens after the committed ids; a `Target` says, for each prefix
committed + draft[:j] (j = 0..len(draft)), which token it would emit greedily; `accept_round`
(gateway.speculative.verify) turns that into the tokens to commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import NamedTuple, Protocol


class DraftFailed(Exception):
    """The drafter could not propose (its backend failed or timed out): decode on the target alone."""


class TargetFailed(Exception):
    """The target could not verify or generate: the request fails (there is nothing else to ask)."""


class Drafter(Protocol):
    """Proposes tokens that the target will probably emit next.

    A drafter whose `draft` costs microseconds (no backend call, e.g. the n-gram drafter) may set a
    class attribute `cheap = True`: the decoder then asks it after every token of a plain burst and
    resumes speculating as soon as it has a proposal.
    """

    name: str

    async def draft(self, committed: Sequence[int], k: int) -> list[int]:
        """Up to `k` token ids to follow `committed` (fewer, or none, when it has no good guess).

        Raises `DraftFailed` when its backend fails; never anything else.
        """
        ...


class Verification(NamedTuple):
    """The target's greedy choices after each prefix committed + draft[:j], j = 0..len(draft).

    `argmax[j]` is the token the target emits after draft[:j], or None when that position's
    maximum is a tie (or unknown), so accepting or correcting there would not be exact: the round
    stops and the target generates that position itself. It may be shorter than len(draft) + 1
    only when the target stopped early (an EOS inside the block): positions past it are unknown.
    """

    argmax: list[int | None]


class Target(Protocol):
    """The expensive model, seen as a greedy next-token oracle over token-id prefixes.

    `eos_ids` holds the ids that end a generation on this target (EOS, and any other end-of-turn
    token). A target adds to it as it learns them (a server reporting that it stopped on EOS names
    the token it stopped on), so the decoder reads it live, after every call.
    """

    name: str
    eos_ids: set[int]

    async def verify(self, committed: Sequence[int], draft: Sequence[int]) -> Verification:
        """One call checking every prefix of `draft` (raises `TargetFailed`)."""
        ...

    def generate(self, committed: Sequence[int], max_tokens: int) -> AsyncIterator[int]:
        """Plain greedy decoding from `committed`, token by token (raises `TargetFailed`)."""
        ...


class TokenCodec(Protocol):
    """The target's tokenizer, reached over its server's API (llama.cpp `/tokenize`, vLLM `/tokenize`).

    Every method raises `TokenizerError` (gateway.speculative.probe) when the server cannot answer.
    """

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """`text` as target ids: special-token text (`<|im_end|>`) parsed as the special token; BOS/EOS
        only with `add_special` (the start-up probe compares what each side adds)."""
        ...

    async def detokenize(self, ids: Sequence[int]) -> str:
        """The text of `ids` as the server renders generated text (special tokens as their text)."""
        ...


class RoundResult(NamedTuple):
    """What one round commits: `tokens` (accepted drafts, then the correction or bonus token when
    known), how many drafts were accepted, and whether the round stopped on a tie (the next token
    must come from the target's own generation)."""

    tokens: list[int]
    accepted: int
    drafted: int
    tie: bool
