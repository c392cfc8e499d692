"""`accept_round` and the vLLM readers: the acceptance rule, ties, and V-A tie detection on entries
built the way vLLM builds them (count ranks for the prompt token, positional ranks for the top-N)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from gateway.speculative.interfaces import RoundResult, Verification
from gateway.speculative.verify import (
    PromptLogprobsEntry,
    accept_round,
    vllm_batched_prefix_argmax,
    vllm_prompt_logprobs_argmax,
)


def test_all_accepted_commits_the_bonus() -> None:
    assert accept_round([1, 2, 3], Verification([1, 2, 3, 9])) == RoundResult([1, 2, 3, 9], 3, 3, False)


def test_first_mismatch_commits_the_correction_and_stops() -> None:
    # Position 2 would match the draft again, but it was computed on a prefix holding a wrong draft.
    assert accept_round([1, 2, 3], Verification([1, 7, 3, 9])) == RoundResult([1, 7], 1, 3, False)


def test_mismatch_at_the_first_position_commits_one_token() -> None:
    assert accept_round([5], Verification([6, 1])) == RoundResult([6], 0, 1, False)


def test_tie_at_a_draft_position_commits_the_accepted_drafts_only() -> None:
    assert accept_round([1, 2, 3], Verification([1, None, 3, 9])) == RoundResult([1], 1, 3, True)
    assert accept_round([1, 2], Verification([None, 2, 4])) == RoundResult([], 0, 2, True)


def test_tie_at_the_bonus_is_a_tie() -> None:
    assert accept_round([1, 2], Verification([1, 2, None])) == RoundResult([1, 2], 2, 2, True)


def test_missing_bonus_after_accepted_drafts_is_not_a_tie() -> None:
    assert accept_round([1, 2], Verification([1, 2])) == RoundResult([1, 2], 2, 2, False)


def test_verification_ending_inside_the_draft_stops_as_unknown() -> None:
    # The target stopped early (EOS at position 0 accepted): what follows is unknown.
    assert accept_round([0, 4, 4], Verification([0])) == RoundResult([0], 1, 3, True)


def test_empty_draft_commits_the_next_token_or_reports_a_tie() -> None:
    assert accept_round([], Verification([8])) == RoundResult([8], 0, 0, False)
    assert accept_round([], Verification([None])) == RoundResult([], 0, 0, True)
    assert accept_round([], Verification([])) == RoundResult([], 0, 0, True)


@given(
    draft=st.lists(st.integers(0, 3), max_size=6),
    argmax=st.lists(st.one_of(st.none(), st.integers(0, 3)), max_size=8),
)
def test_accept_round_follows_the_rule(draft: list[int], argmax: list[int | None]) -> None:
    result = accept_round(draft, Verification(argmax))
    n = result.accepted
    assert result.drafted == len(draft)
    assert result.tokens[:n] == draft[:n]
    assert all(argmax[j] == draft[j] for j in range(n))
    # Progress or a tie, never a silent empty round.
    assert result.tokens or result.tie
    assert len(result.tokens) in (n, n + 1)
    if len(result.tokens) == n + 1:
        assert not result.tie
        assert result.tokens[n] == argmax[n]
    if n < len(draft) and not result.tie:
        assert argmax[n] != draft[n]
    if result.tie:
        assert len(result.tokens) == n
        assert n >= len(argmax) or argmax[n] is None


def test_batched_prefix_choices_are_the_argmax() -> None:
    assert vllm_batched_prefix_argmax([4, 5, 6]) == Verification([4, 5, 6])
    assert accept_round([4, 1], vllm_batched_prefix_argmax([4, 5, 6])).tokens == [4, 5]


# V-A: prompt = committed (2 ids) + draft; index 0 is None as vLLM returns it.
COMMITTED_LEN = 2


def v_a(entries: list[PromptLogprobsEntry | None], draft: list[int], generated: int | None = 99) -> Verification:
    prompt_logprobs: list[PromptLogprobsEntry | None] = [None, {7: (-0.1, 1)}, *entries]
    return vllm_prompt_logprobs_argmax(prompt_logprobs[: COMMITTED_LEN + len(draft)], COMMITTED_LEN, draft, generated)


def test_v_a_reads_the_distribution_after_each_prefix() -> None:
    # Prompt [c0, c1, d0, d1]: index p scores prompt token p, so draft[0] is scored at index 2.
    prompt_logprobs: list[PromptLogprobsEntry | None] = [None, {6: (-0.1, 1)}, {10: (-0.2, 1)}, {11: (-0.3, 1)}]
    verification = vllm_prompt_logprobs_argmax(prompt_logprobs, committed_len=2, draft=[10, 11], generated=12)
    assert verification == Verification([10, 11, 12])


def test_v_a_strict_max_accepts_and_the_generated_token_is_the_bonus() -> None:
    verification = v_a([{3: (-0.5, 1)}], draft=[3], generated=42)
    assert verification == Verification([3, 42])
    assert accept_round([3], verification).tokens == [3, 42]


def test_v_a_rank_two_with_the_top_logprob_is_a_tie() -> None:
    verification = v_a([{3: (-0.69, 2), 4: (-0.69, 1)}], draft=[3])
    assert verification.argmax[0] is None
    assert accept_round([3], verification) == RoundResult([], 0, 1, True)


def test_v_a_top_one_differing_is_the_correction() -> None:
    verification = v_a([{3: (-2.0, 2), 4: (-0.2, 1)}], draft=[3])
    assert verification.argmax[0] == 4
    assert accept_round([3], verification) == RoundResult([4], 0, 1, False)


def test_v_a_rank_one_tied_with_a_shown_entry_is_a_tie() -> None:
    # prompt_logprobs=2: the draft token is topk[0] (positional rank 1) but topk[1] has its logprob.
    assert v_a([{3: (-0.69, 1), 4: (-0.69, 2)}], draft=[3]).argmax[0] is None


def test_v_a_shown_top_with_a_count_rank_above_one_is_unknown() -> None:
    # prompt_logprobs=0: only the prompt token, and some unshown token ties or beats it.
    assert v_a([{3: (-0.69, 2)}], draft=[3]).argmax[0] is None


def test_v_a_missing_entries_are_unknown() -> None:
    assert v_a([None], draft=[3]).argmax[0] is None
    assert v_a([{4: (-0.1, 1)}], draft=[3]).argmax[0] is None
    # committed_len 0: nothing scores the first prompt token.
    assert vllm_prompt_logprobs_argmax([None], 0, [5], 6).argmax == [None, 6]
    # A response shorter than the prompt (should not happen): unknown, not an IndexError.
    assert vllm_prompt_logprobs_argmax([None, None], 2, [5], 6).argmax == [None, 6]


def test_v_a_stops_at_the_first_mismatch_when_accepted() -> None:
    entries: list[PromptLogprobsEntry | None] = [{3: (-0.1, 1)}, {5: (-3.0, 3), 6: (-0.4, 1)}, {1: (-0.1, 1)}]
    assert accept_round([3, 5, 1], v_a(entries, draft=[3, 5, 1])).tokens == [3, 6]


def vllm_entry(logprobs: Sequence[float], token: int, top_n: int, topk_order: Sequence[int]) -> PromptLogprobsEntry:
    """One position as vLLM returns it: the prompt token with its count rank, then the top-N with
    positional ranks 1..N overwriting it when it is among them. `topk_order` is how torch.topk
    ordered the vocabulary, ties included, which need not match `argmax`'s choice."""
    count_rank = sum(1 for value in logprobs if value >= logprobs[token])
    entry: PromptLogprobsEntry = {token: (logprobs[token], count_rank)}
    for position, top in enumerate(topk_order[:top_n], start=1):
        entry[top] = (logprobs[top], position)
    return entry


@st.composite
def scored_position(draw: st.DrawFn) -> tuple[list[float], int, list[int]]:
    vocab = draw(st.integers(2, 6))
    # Integer logprobs make ties frequent.
    logprobs = [float(-draw(st.integers(0, 3))) for _ in range(vocab)]
    token = draw(st.integers(0, vocab - 1))
    shuffled = draw(st.permutations(range(vocab)))
    topk_order = sorted(shuffled, key=lambda t: -logprobs[t])  # stable: ties in an arbitrary order
    return logprobs, token, topk_order


@given(position=scored_position(), top_n=st.integers(2, 3))
def test_v_a_with_two_or_more_logprobs_is_exact_or_a_tie(
    position: tuple[list[float], int, list[int]], top_n: int
) -> None:
    logprobs, token, topk_order = position
    best = max(logprobs)
    leaders = [t for t, value in enumerate(logprobs) if value == best]
    choice = v_a([vllm_entry(logprobs, token, top_n, topk_order)], draft=[token]).argmax[0]
    if len(leaders) == 1:
        assert choice == leaders[0]
    else:
        assert choice is None


@given(position=scored_position())
def test_v_a_with_one_logprob_is_exact_without_ties(position: tuple[list[float], int, list[int]]) -> None:
    logprobs, token, topk_order = position
    best = max(logprobs)
    leaders = [t for t, value in enumerate(logprobs) if value == best]
    choice = v_a([vllm_entry(logprobs, token, 1, topk_order)], draft=[token]).argmax[0]
    if len(leaders) == 1:
        assert choice == leaders[0]
    elif token in leaders and topk_order[0] != token:
        # A tie that includes the draft token is always visible: it ranks >= 2 with the top logprob.
        assert choice is None
