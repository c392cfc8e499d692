"""Prompt-lookup drafting: the n-gram index against a brute-force reference, the drafter's sources
and incremental indexing, and the bounded store of recent responses."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.speculative.interfaces import Drafter
from gateway.speculative.ngram import NgramDrafter, NgramIndex, RecentResponses


def reference_lookup(tokens: Sequence[int], suffix: Sequence[int], max_n: int, min_n: int) -> int | None:
    """The spec, by brute force: longest n first, latest occurrence that has a continuation."""
    for n in range(min(max_n, len(suffix)), min_n - 1, -1):
        gram = list(suffix[len(suffix) - n :])
        for start in range(len(tokens) - n - 1, -1, -1):
            if list(tokens[start : start + n]) == gram:
                return start + n
    return None


# A small alphabet, so that repeats (and ties between occurrences) are common.
token_lists = st.lists(st.integers(min_value=0, max_value=3), max_size=60)


class TestNgramIndex:
    def test_longest_suffix_match_wins(self) -> None:
        # "1 2" last occurs at 5, but "9 1 2" (longer) occurs at 0: the longer one is chosen.
        index = NgramIndex([9, 1, 2, 7, 5, 1, 2, 8, 0, 9, 1, 2], max_n=3, min_n=2)
        assert index.lookup(index.tokens) == 3

    def test_most_recent_occurrence_wins(self) -> None:
        index = NgramIndex([1, 2, 3, 1, 2, 4, 1, 2], max_n=2, min_n=2)
        assert index.lookup(index.tokens) == 5  # after the second "1 2", not the first

    def test_current_suffix_never_matches_itself(self) -> None:
        index = NgramIndex([5, 6, 7, 8], max_n=4, min_n=1)
        assert index.lookup(index.tokens) is None
        assert index.lookup([7, 8]) is None  # an outside suffix equal to the tail: no continuation

    def test_match_at_the_end_is_skipped_for_an_earlier_one_with_a_continuation(self) -> None:
        index = NgramIndex([1, 2, 3, 1, 2], max_n=2, min_n=2)
        assert index.lookup([0, 1, 2]) == 2

    def test_suffix_shorter_than_min_n(self) -> None:
        index = NgramIndex([1, 1, 1], max_n=3, min_n=2)
        assert index.lookup([1]) is None

    def test_lookup_within_a_narrower_range(self) -> None:
        index = NgramIndex([1, 2, 3, 9, 2, 3, 7, 1, 2, 3], max_n=3, min_n=1)
        assert index.lookup(index.tokens) == 3
        assert index.lookup(index.tokens, max_n=2) == 6
        with pytest.raises(ValueError):
            index.lookup(index.tokens, max_n=4)

    def test_find_exact_ngram(self) -> None:
        index = NgramIndex([4, 5, 6, 4, 5], max_n=3, min_n=2)
        assert index.find((4, 5)) == 2
        assert index.find((5, 6, 4)) == 4
        assert index.find((4,)) is None  # outside the indexed range

    def test_is_a_sequence(self) -> None:
        index = NgramIndex([3, 4, 5])
        assert len(index) == 3 and index[1] == 4 and index[1:] == [4, 5] and list(index) == [3, 4, 5]

    def test_bad_range(self) -> None:
        with pytest.raises(ValueError):
            NgramIndex(min_n=3, max_n=2)
        with pytest.raises(ValueError):
            NgramIndex(min_n=0, max_n=2)

    @settings(max_examples=300, deadline=None)
    @given(
        tokens=token_lists,
        cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=6),
        outside=token_lists,
        n_range=st.tuples(st.integers(min_value=1, max_value=3), st.integers(min_value=0, max_value=3)),
    )
    def test_incremental_equals_fresh_build_and_reference(
        self, tokens: list[int], cuts: list[int], outside: list[int], n_range: tuple[int, int]
    ) -> None:
        min_n, max_n = n_range[0], n_range[0] + n_range[1]
        incremental = NgramIndex(max_n=max_n, min_n=min_n)
        done = 0
        for cut in [*sorted(c for c in cuts if c <= len(tokens)), len(tokens)]:
            incremental.extend(tokens[done:cut])
            done = cut
            prefix = tokens[:done]
            fresh = NgramIndex(prefix, max_n=max_n, min_n=min_n)
            expected_own = reference_lookup(prefix, prefix, max_n, min_n)
            assert incremental.lookup(incremental.tokens) == fresh.lookup(prefix) == expected_own
            expected_outside = reference_lookup(prefix, outside, max_n, min_n)
            assert incremental.lookup(outside) == fresh.lookup(outside) == expected_outside
            assert incremental.lookup(tuple(outside)) == expected_outside


DOCUMENT = list(range(100, 160))  # distinct tokens: every n-gram occurs once


class TestNgramDrafter:
    def test_is_a_drafter(self) -> None:
        drafter: Drafter = NgramDrafter()
        assert drafter.name == "ngram"

    async def test_copies_the_document_continuation(self) -> None:
        # A prompt holding a document, then an answer quoting it: the draft is the quote's next k.
        committed = [1, *DOCUMENT, 2, 3, *DOCUMENT[10:25]]
        drafter = NgramDrafter()
        assert await drafter.draft(committed, 8) == DOCUMENT[25:33]

    async def test_continuation_stops_at_the_end_of_the_source(self) -> None:
        committed = [*DOCUMENT[:10], 7, *DOCUMENT[6:10]]
        assert await NgramDrafter().draft(committed, 8) == [7, *DOCUMENT[6:10]]

    async def test_no_match_drafts_nothing(self) -> None:
        assert await NgramDrafter().draft(DOCUMENT, 8) == []
        assert await NgramDrafter().draft([], 8) == []
        assert await NgramDrafter().draft([5], 8) == []

    async def test_single_token_match_is_ignored_by_default(self) -> None:
        committed = [1, 2, 3, 4, 5, 1]
        assert await NgramDrafter().draft(committed, 4) == []
        assert await NgramDrafter(min_n=1).draft(committed, 4) == [2, 3, 4, 5]

    async def test_k_zero(self) -> None:
        assert await NgramDrafter().draft([1, 2, 3, 1, 2], 0) == []

    async def test_falls_back_to_context(self) -> None:
        drafter = NgramDrafter(context=[DOCUMENT])
        assert await drafter.draft([1, 2, *DOCUMENT[40:43]], 5) == DOCUMENT[43:48]

    async def test_own_sequence_is_preferred_over_context(self) -> None:
        drafter = NgramDrafter(context=[[8, 9, 50, 51]])
        assert await drafter.draft([8, 9, 60, 61, 8, 9], 2) == [60, 61]

    async def test_longer_context_match_beats_earlier_source(self) -> None:
        first = [2, 3, 70, 71]  # only "2 3" matches
        second = [1, 2, 3, 80, 81]  # "1 2 3" matches
        drafter = NgramDrafter(context=[first, second])
        assert await drafter.draft([0, 1, 2, 3], 2) == [80, 81]
        # Equal n: the earlier source (higher priority) wins.
        drafter = NgramDrafter(context=[first, [2, 3, 90]])
        assert await drafter.draft([9, 2, 3], 2) == [70, 71]

    async def test_context_is_bounded(self) -> None:
        drafter = NgramDrafter(context=[DOCUMENT, [1, 2, 3, 4]], max_context_tokens=30)
        assert [len(c) for c in drafter.contexts] == [30]
        assert await drafter.draft([DOCUMENT[20], DOCUMENT[21]], 20) == DOCUMENT[22:30]
        assert await drafter.draft([DOCUMENT[40], DOCUMENT[41]], 5) == []
        assert await drafter.draft([1, 2, 3], 5) == []

    async def test_appending_does_not_rebuild(self) -> None:
        drafter = NgramDrafter(context=[DOCUMENT])
        committed = [1, 2, 3, *DOCUMENT[:5]]
        await drafter.draft(committed, 4)
        index = drafter.index
        for token in DOCUMENT[5:15]:
            committed.append(token)
            size = len(index)
            await drafter.draft(committed, 4)
            assert drafter.index is index and len(index) == size + 1
        assert drafter.rebuilds == 0

    async def test_rebuilds_when_committed_is_not_an_extension(self) -> None:
        drafter = NgramDrafter()
        await drafter.draft([1, 2, 3, 4, 5, 6], 4)
        # A different sequence (same length and longer, differing at the boundary): rebuilt.
        assert await drafter.draft([1, 2, 3, 9, 1, 2, 3], 4) == [9, 1, 2, 3]
        assert drafter.rebuilds == 1
        assert drafter.index.tokens == [1, 2, 3, 9, 1, 2, 3]
        # Shorter (a rollback): rebuilt, so the dropped "1 2 3" at 4 is not drafted from.
        assert await drafter.draft([1, 2, 3, 9, 1, 2], 4) == [3, 9, 1, 2]
        assert drafter.rebuilds == 2
        assert drafter.index.tokens == [1, 2, 3, 9, 1, 2]
        # A different first token: rebuilt.
        await drafter.draft([0, 2, 3, 9, 1, 2, 5], 4)
        assert drafter.rebuilds == 3

    async def test_reset_forgets_the_sequence(self) -> None:
        drafter = NgramDrafter()
        await drafter.draft([1, 2, 3, 1, 2], 4)
        drafter.reset()
        assert len(drafter.index) == 0
        assert await drafter.draft([5, 6, 7, 5, 6], 4) == [7, 5, 6]

    async def test_accepts_any_sequence(self) -> None:
        assert await NgramDrafter().draft((1, 2, 3, 1, 2), 4) == [3, 1, 2]
        assert await NgramDrafter().draft(NgramIndex([1, 2, 3, 1, 2]), 4) == [3, 1, 2]


class TestRecentResponses:
    def test_most_recent_first_and_lru_eviction(self) -> None:
        store = RecentResponses(max_entries=2)
        store.add([1, 2])
        store.add([3, 4])
        store.add([1, 2])  # re-added: moves up, so [3, 4] is now the oldest
        store.add([5, 6])
        assert [list(s) for s in store.sources()] == [[5, 6], [1, 2]]
        assert len(store) == 2

    def test_entries_are_truncated_to_their_head(self) -> None:
        store = RecentResponses(max_tokens_per_entry=3)
        store.add([1, 2, 3, 4, 5])
        assert [list(s) for s in store.sources()] == [[1, 2, 3]]

    def test_too_short_sequences_are_ignored(self) -> None:
        store = RecentResponses()
        store.add([])
        store.add([7])
        assert store.sources() == []

    def test_bad_bounds(self) -> None:
        with pytest.raises(ValueError):
            RecentResponses(max_entries=0)

    async def test_drafter_reuses_the_stored_indexes(self) -> None:
        store = RecentResponses()
        store.add(DOCUMENT)
        sources = store.sources()
        drafter = NgramDrafter(context=sources)
        assert drafter.contexts[0] is sources[0]  # indexed once, when stored
        assert await drafter.draft([0, *DOCUMENT[3:6]], 3) == DOCUMENT[6:9]

    async def test_drafter_reindexes_stored_sequences_with_another_n_range(self) -> None:
        store = RecentResponses(max_n=2)
        store.add(DOCUMENT)
        drafter = NgramDrafter(context=store.sources())
        assert drafter.contexts[0] is not store.sources()[0]
        assert await drafter.draft([0, *DOCUMENT[3:6]], 3) == DOCUMENT[6:9]
