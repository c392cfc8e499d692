"""Model-free drafting by prompt lookup: propose the tokens that followed the latest earlier
occurrence of the committed sequence's suffix n-gram (see §4.2 of
../shared/reference/speculative-decoding.md: "2x-4x in input-grounded tasks").

The gateway sees context a serving engine does not (earlier responses of the conversation, other
requests on the route, RAG documents), so besides the request's own prompt + output it can look
the suffix up in extra context sequences. Drafting costs microseconds in-process (t_d ≈ 0 in the
§5.2 cost model), which is why a caller should speculate only when `draft` returns a non-empty
list: a round without a match is plain decoding, a round with a false match pays a verify call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import overload

DEFAULT_MAX_N = 4
# n = 1 is not the default: a single token (",", " the", a newline) recurs everywhere and its last
# occurrence says little about what follows, so 1-gram drafts are mostly rejected. With drafting
# free, the only cost of a draft is the verify round it triggers, and a rejected one is pure loss.
DEFAULT_MIN_N = 2
# Indexing costs about a microsecond per token and n, so the extra context is bounded to keep the
# per-request setup in the low milliseconds even when it has to be (re)built.
DEFAULT_MAX_CONTEXT_TOKENS = 32_768


class NgramIndex(Sequence[int]):
    """An append-only token-id sequence with, for each n in [min_n, max_n], the start of the most
    recent occurrence of every n-gram that is followed by at least one token.

    An n-gram is entered when the token after it arrives, not when it is complete. So the n-gram
    that ends at the last token (the current suffix) is never in the tables: a lookup with the
    sequence's own suffix finds the previous occurrence instead of itself, and every hit has a
    continuation to copy. Appending costs max_n - min_n + 1 dict writes per token.
    """

    __slots__ = ("_tables", "max_n", "min_n", "tokens")

    def __init__(self, tokens: Iterable[int] = (), *, max_n: int = DEFAULT_MAX_N, min_n: int = DEFAULT_MIN_N) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n} max_n={max_n}")
        self.max_n = max_n
        self.min_n = min_n
        self.tokens: list[int] = []
        # Ascending n, so `extend` can stop at the first n longer than the sequence so far.
        self._tables: list[tuple[int, dict[tuple[int, ...], int]]] = [(n, {}) for n in range(min_n, max_n + 1)]
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append `tokens`, entering the n-grams that each new token completes the continuation of."""
        seq = self.tokens
        tables = self._tables
        for token in tokens:
            end = len(seq)
            for n, table in tables:
                start = end - n
                if start < 0:
                    break
                # Overwriting keeps the most recent occurrence, the one a model copying from
                # context is most likely to be continuing.
                table[tuple(seq[start:end])] = start
            seq.append(token)

    def lookup(self, suffix: Sequence[int], max_n: int | None = None, min_n: int | None = None) -> int | None:
        """The position right after the most recent occurrence of the longest suffix n-gram of
        `suffix` (n from `max_n` down to `min_n`, within the indexed range) that has a continuation,
        or None. With this index's own tokens as `suffix`, the suffix itself never matches.
        """
        hi = self.max_n if max_n is None else max_n
        lo = self.min_n if min_n is None else min_n
        if lo < self.min_n or hi > self.max_n:
            raise ValueError(f"n range [{lo}, {hi}] is outside the indexed [{self.min_n}, {self.max_n}]")
        length = len(suffix)
        top = min(hi, length)
        # One copy of the tail (not of the whole suffix), then cheap slices of it per n.
        if isinstance(suffix, list | tuple):
            tail = suffix[length - top :]
        else:
            tail = [suffix[i] for i in range(length - top, length)]
        for n in range(top, lo - 1, -1):
            start = self._tables[n - self.min_n][1].get(tuple(tail[top - n :]))
            if start is not None:
                return start + n
        return None

    def find(self, ngram: tuple[int, ...]) -> int | None:
        """The position right after the most recent occurrence of `ngram` that has a continuation,
        or None (also when its length is outside the indexed range)."""
        n = len(ngram)
        if not self.min_n <= n <= self.max_n:
            return None
        start = self._tables[n - self.min_n][1].get(ngram)
        return None if start is None else start + n

    @property
    def n_range(self) -> tuple[int, int]:
        """(min_n, max_n): the n-gram lengths this index can look up."""
        return (self.min_n, self.max_n)

    def __len__(self) -> int:
        return len(self.tokens)

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        return self.tokens[index]


class NgramDrafter:
    """A `Drafter` for one request: prompt lookup over the request's committed ids, then over
    extra context sequences (earlier responses, RAG documents) when the request's own has no match.

    It keeps its index between calls and indexes only the new tail of `committed`, so a round
    costs microseconds however long the prompt. Whether `committed` still extends what was
    indexed is checked on the first token and the last max_n indexed tokens (the ones the next
    n-grams are built from), not on every token: a caller that rewrites the middle of the sequence
    must call `reset`. Context sequences that are `NgramIndex`es with the same n range (as
    `RecentResponses` hands out) are used as they are, without re-indexing.
    """

    name = "ngram"
    # Drafting costs microseconds: the decoder may ask after every plain token whether to resume.
    cheap = True

    def __init__(
        self,
        context: Sequence[Sequence[int]] = (),
        *,
        max_n: int = DEFAULT_MAX_N,
        min_n: int = DEFAULT_MIN_N,
        max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
    ) -> None:
        if max_context_tokens < 0:
            raise ValueError(f"max_context_tokens must be >= 0, got {max_context_tokens}")
        self.max_n = max_n
        self.min_n = min_n
        self.index = NgramIndex(max_n=max_n, min_n=min_n)
        # Counted so callers (and tests) can see that steady-state rounds do not re-index.
        self.rebuilds = 0
        self.contexts: list[NgramIndex] = self._index_context(context, max_context_tokens)

    def _index_context(self, context: Sequence[Sequence[int]], budget: int) -> list[NgramIndex]:
        # Sources come in priority order (most relevant first), so the budget is spent on the
        # first ones and the one that crosses it keeps its head.
        indexes: list[NgramIndex] = []
        for source in context:
            if budget <= 0:
                break
            take = min(len(source), budget)
            if take < 2:
                continue  # nothing can both match and be followed by a token
            if isinstance(source, NgramIndex) and source.n_range == (self.min_n, self.max_n) and take == len(source):
                indexes.append(source)
            else:
                indexes.append(NgramIndex((source[i] for i in range(take)), max_n=self.max_n, min_n=self.min_n))
            budget -= take
        return indexes

    def reset(self) -> None:
        """Forget the indexed request sequence (the next `draft` re-indexes `committed` from scratch)."""
        self.index = NgramIndex(max_n=self.max_n, min_n=self.min_n)

    def _sync(self, committed: Sequence[int]) -> None:
        seen = self.index.tokens
        n_seen = len(seen)
        n_new = len(committed)
        boundary = range(max(0, n_seen - self.max_n), n_seen)
        extends = n_new >= n_seen and (
            n_seen == 0 or (committed[0] == seen[0] and all(committed[i] == seen[i] for i in boundary))
        )
        if not extends:
            self.rebuilds += 1
            self.index = NgramIndex(max_n=self.max_n, min_n=self.min_n)
            n_seen = 0
        if n_new > n_seen:
            # Indexing by position, not slicing: `committed` may be any Sequence, and a list slice
            # would copy the tail anyway.
            self.index.extend(committed[i] for i in range(n_seen, n_new))

    async def draft(self, committed: Sequence[int], k: int) -> list[int]:
        """Up to `k` tokens that followed the latest earlier occurrence of the committed suffix, or
        [] when no suffix n-gram (n >= min_n) occurs anywhere with a continuation.

        The continuation is copied as it stands in its source and stops at the source's end.
        """
        self._sync(committed)
        if k <= 0:
            return []
        index = self.index
        pos = index.lookup(index.tokens)
        if pos is not None:
            return index.tokens[pos : pos + k]
        # Longest n first across all context sources, so a 4-gram hit in a later source beats a
        # 2-gram hit in an earlier one; among equal n the earlier (higher-priority) source wins.
        tokens = index.tokens
        for n in range(min(self.max_n, len(tokens)), self.min_n - 1, -1):
            gram = tuple(tokens[len(tokens) - n :])
            for source in self.contexts:
                pos = source.find(gram)
                if pos is not None:
                    return source.tokens[pos : pos + k]
        return []


class RecentResponses:
    """Recently generated token sequences of one route, for later requests to draft from.

    Bounded twice: at most `max_entries` sequences (least recently added or re-added evicted
    first) of at most `max_tokens_per_entry` tokens each (the head is kept: that is where answers
    to similar prompts tend to repeat each other). Each entry is indexed once when added, so a
    drafter built over `sources()` does not re-index it per request.
    """

    def __init__(
        self,
        max_entries: int = 32,
        max_tokens_per_entry: int = 2048,
        *,
        max_n: int = DEFAULT_MAX_N,
        min_n: int = DEFAULT_MIN_N,
    ) -> None:
        if max_entries < 1 or max_tokens_per_entry < 1:
            raise ValueError("max_entries and max_tokens_per_entry must be >= 1")
        self.max_entries = max_entries
        self.max_tokens_per_entry = max_tokens_per_entry
        self.max_n = max_n
        self.min_n = min_n
        # Keyed by the tokens, so the same response generated twice takes one slot and moves up. A
        # plain dict (insertion-ordered) rather than an OrderedDict: iterating an OrderedDict's
        # values re-hashes every key, and tuple hashes are not cached, so `sources()` would cost
        # a pass over every stored token.
        self._entries: dict[tuple[int, ...], NgramIndex] = {}

    def add(self, tokens: Sequence[int]) -> None:
        """Remember a generated sequence (truncated to its head); sequences under 2 tokens are
        ignored, as nothing in them can both match and have a continuation."""
        key = tuple(tokens[i] for i in range(min(len(tokens), self.max_tokens_per_entry)))
        if len(key) < 2:
            return
        entries = self._entries
        # Re-inserting moves an entry to the most recent end of the dict.
        index = entries.pop(key, None)
        entries[key] = NgramIndex(key, max_n=self.max_n, min_n=self.min_n) if index is None else index
        while len(entries) > self.max_entries:
            del entries[next(iter(entries))]

    def sources(self) -> list[Sequence[int]]:
        """The remembered sequences, most recent first (the order `NgramDrafter` prefers them in)."""
        return list(reversed(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)
