"""Greedy acceptance of a drafted block, and the per-backend readers that turn a target's answer into
a `Verification` (see ../shared/reference/speculative-decoding.md §2).

Exactness rests on one rule (§2.0.4): a draft token is kept only where the target's own greedy
choice after the same prefix is that token; the first disagreement is replaced by the target's
choice and ends the round. Where the target's choice is not known for certain (a tie at the top, or
a position the backend did not report), the round stops short and the target decodes that position
itself (§2.0.5), so the output never depends on how a backend breaks ties in a scoring pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.speculative.interfaces import RoundResult, Verification

# token id -> (logprob, rank), one vLLM `prompt_logprobs` position.
PromptLogprobsEntry = dict[int, tuple[float, int]]


def accept_round(draft: Sequence[int], verification: Verification) -> RoundResult:
    """The tokens one round commits: drafts while they match the target's argmax, then the
    correction (first mismatch) or the bonus (after all of them).

    A position whose argmax is None (tie or unknown), or that the verification does not reach,
    stops the round with the accepted drafts only and `tie=True`: the caller asks the target to
    generate that one position. One exception: a missing bonus after at least one accepted draft is
    not a tie, because the round already made progress and the next round will look at that
    position anyway. Invariant: `tokens` is non-empty or `tie` is True, so a caller always advances.
    """
    argmax = verification.argmax
    for i, proposed in enumerate(draft):
        decided = argmax[i] if i < len(argmax) else None
        if decided is None:
            return RoundResult(tokens=list(draft[:i]), accepted=i, drafted=len(draft), tie=True)
        if decided != proposed:
            return RoundResult(tokens=[*draft[:i], decided], accepted=i, drafted=len(draft), tie=False)
    accepted = list(draft)
    bonus = argmax[len(draft)] if len(draft) < len(argmax) else None
    if bonus is not None:
        return RoundResult(tokens=[*accepted, bonus], accepted=len(draft), drafted=len(draft), tie=False)
    # A None bonus is a real tie: the target must pick it. An absent one only matters when nothing
    # was accepted (an empty draft), where stopping without a tie would loop forever.
    tie = len(draft) < len(argmax) or not accepted
    return RoundResult(tokens=accepted, accepted=len(draft), drafted=len(draft), tie=tie)


def vllm_batched_prefix_argmax(choices_tokens: Sequence[int]) -> Verification:
    """V-B (§2.2): `choices_tokens[j]` is the one token vLLM (or trtllm-serve) generated with
    temperature 0 for the prompt committed + draft[:j], so it is the target's greedy choice itself.

    No tie check is needed: each choice comes out of the target's own greedy sampler, the same
    argmax (same tie-break) that target-alone decoding applies, not a reading of a score table.
    (Prefill-vs-decode numerics can still flip near-ties: §2.6, tested with VLLM_BATCH_INVARIANT=1.)
    """
    return Verification(argmax=list(choices_tokens))


def vllm_prompt_logprobs_argmax(
    prompt_logprobs: Sequence[PromptLogprobsEntry | None],
    committed_len: int,
    draft: Sequence[int],
    generated: int | None,
) -> Verification:
    """V-A (§2.1): one completion of committed + draft with `prompt_logprobs`, `max_tokens=1`.

    vLLM's `prompt_logprobs[p]` scores prompt token p given tokens 0..p-1 (`None` at index 0: the
    first token has no predecessor), so `draft[i]` (0-based) is scored at index `committed_len + i`:
    the reference's `prompt_logprobs[L-1+i]` for `d_i` counts drafts from 1. `generated` is the one
    completion token: the target's greedy choice after the whole draft, i.e. the bonus.

    What a vLLM entry holds, and why the rule below is exact:
    - the prompt token itself, with `rank` = the number of vocabulary logprobs >= its own (vLLM's
      `batched_count_greater_than`), so rank 1 from that count means a strict, unique maximum;
    - the top-N tokens with *positional* ranks 1..N (`append_logprobs_for_next_position`), which
      overwrite the prompt token's entry when it is among them. A prompt token that is torch.topk's
      first pick therefore shows rank 1 even when it ties another token, so rank 1 is trusted only
      when no other shown entry has the same logprob.
    - Target-alone greedy takes `argmax`, whose pick among tied maxima need not be the top-1 shown
      here (§2.0.5), so any visible tie at the top yields None and the target decodes that position.

    Per position: the entry, or the draft token in it, missing -> None (unknown); several shown
    entries share the top logprob -> None (tie); the draft token is the unique shown top with rank
    1 -> the draft token; it is the shown top but ranks >= 2 (an unshown token ties or beats it)
    -> None; otherwise the shown top (a strictly larger logprob) is the argmax, the correction.
    With `prompt_logprobs=1` a tie between the shown top-1 and an unshown token is invisible;
    ask for >= 2 to make the tie check complete (§2.6).
    """
    argmax: list[int | None] = []
    for i, proposed in enumerate(draft):
        position = committed_len + i
        entry = prompt_logprobs[position] if 0 < position < len(prompt_logprobs) else None
        argmax.append(_greedy_choice(entry, proposed))
    argmax.append(generated)
    return Verification(argmax=argmax)


def _greedy_choice(entry: PromptLogprobsEntry | None, proposed: int) -> int | None:
    """The target's greedy token at one V-A position, or None when the entry cannot prove it."""
    if not entry or proposed not in entry:
        return None
    top = max(logprob for logprob, _ in entry.values())
    leaders = [token for token, (logprob, _) in entry.items() if logprob == top]
    if len(leaders) > 1:
        return None
    leader = leaders[0]
    if leader == proposed:
        _, rank = entry[proposed]
        return proposed if rank == 1 else None
    return leader
