"""The round loop of gateway-coordinated speculative decoding (greedy, exact): draft, verify in one
target call, commit, stream (../shared/reference/speculative-decoding.md §5.1, §5.4, §5.5).

The committed ids are the only state. Every path (a round, a tie, a plain step, the fall-back to
plain decoding) continues from them, so the output is the target-alone greedy output token for
token: nothing is restarted, repeated or skipped.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Sequence
from contextlib import aclosing
from typing import Literal, NamedTuple

from gateway.speculative.interfaces import Drafter, DraftFailed, RoundResult, Target
from gateway.speculative.policy import SpeculationPolicy
from gateway.speculative.verify import accept_round

CommitSource = Literal["speculative", "plain"]
RoundObserver = Callable[[RoundResult, float, float], None]


class CommitEvent(NamedTuple):
    """Tokens committed together, ready to stream (§5.5: only verified tokens, one burst per round).

    `round` is the speculative round that produced them (None for tokens the target generated on
    its own: a plain step, the position after a tie, or plain decoding after a fall-back). Every
    event carries at least one token.
    """

    tokens: list[int]
    round: RoundResult | None
    source: CommitSource


def _ignore_round(result: RoundResult, draft_s: float, verify_s: float) -> None:
    """The default `on_round`: nobody is listening."""


class SpeculativeDecoder:
    """Decodes one request greedily on `target`, `drafter` proposing blocks of k tokens.

    One instance per request: the counters describe the last `run` (§5.5's `x_spec`). Each round's
    move comes from `policy` (a `SpeculationPolicy`: k, plain stretches, bursts after empty drafts)
    or, the bare form, from `choose_k()` (exactly one of the two): k = 0 asks for a plain target step
    (no draft), and an empty draft is followed by one plain step. `on_round(result, draft_s, verify_s)`
    sees every speculative round with its draft and verify durations from `clock`, for the
    adaptive k (§5.3) and the metrics (§5.6). A `TargetFailed` propagates: there is nothing left to
    ask. A `DraftFailed` switches to plain decoding for the rest of the request (§5.4).
    """

    def __init__(
        self,
        drafter: Drafter,
        target: Target,
        *,
        choose_k: Callable[[], int] | None = None,
        policy: SpeculationPolicy | None = None,
        eos_ids: Collection[int] = frozenset(),
        on_round: RoundObserver = _ignore_round,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.drafter = drafter
        self.target = target
        if (choose_k is None) == (policy is None):
            raise TypeError("SpeculativeDecoder needs exactly one of choose_k and policy")
        self.choose_k = choose_k
        # The bare `choose_k` is a policy that never bursts: one plain step per empty draft.
        if policy is None:
            assert choose_k is not None
            policy = SpeculationPolicy(choose_k, max_empty_drafts=None)
        self.policy = policy
        # Read at every commit, not copied: a target's own set grows as it learns its end tokens.
        self.eos_ids = eos_ids
        self.on_round = on_round
        self.clock = clock
        self._reset()

    def _reset(self) -> None:
        self.rounds = 0
        self.drafted = 0
        self.accepted = 0
        self.target_calls = 0
        self.plain_tokens = 0
        self.plain_bursts = 0  # plain calls the policy asked for after a streak of empty drafts
        self.interrupted_bursts = 0  # bursts cut short because the drafter matched again
        self.fallback_reason: str | None = None
        self.fallback_detail: str | None = None
        self.finished_on_eos = False

    async def run(self, prompt_ids: Sequence[int], max_tokens: int) -> AsyncGenerator[CommitEvent, None]:
        """Yield the committed output of `prompt_ids`, at most `max_tokens` ids, ending after an EOS."""
        self._reset()
        self.policy.reset()
        committed = list(prompt_ids)
        produced = 0
        while produced < max_tokens and not self.finished_on_eos:
            remaining = max_tokens - produced
            if self.fallback_reason is not None:
                async with aclosing(self._plain(committed, remaining)) as events:
                    async for event in events:
                        yield event
                return
            # A round yields at most k + 1 tokens: drafting more than remaining - 1 only makes the
            # target verify positions that max_tokens will cut anyway.
            step = self.policy.next_step()
            k = min(step.k, remaining - 1)
            plain = 1 if step.k > 0 else step.plain  # a k cut to 0 by max_tokens: the last token, plainly
            draft: list[int] = []
            draft_s = 0.0
            if k > 0:
                started = self.clock()
                try:
                    # Snapshots: the drafter and target must not see `committed` grow under them.
                    draft = list(await self.drafter.draft(tuple(committed), k))[:k]
                except DraftFailed as failure:
                    self.fallback_reason = "draft_failed"
                    self.fallback_detail = str(failure) or type(failure).__name__
                    continue
                draft_s = self.clock() - started
                if not draft:
                    bursts = self.policy.bursts
                    plain = self.policy.after_empty_draft()
                    self.plain_bursts += self.policy.bursts - bursts
            if not draft:
                # An empty draft costs the same target pass as verifying nothing (V-B sends one
                # prompt, V-A would even rescore the whole prompt), and a plain step is exact by
                # construction, with no tie to handle: take the plain step (or the policy's burst,
                # one streamed call, never more than the tokens still wanted).
                before = produced
                # A drafter that costs microseconds (n-gram) is asked after every token of a burst:
                # once it matches again the burst stops and speculation resumes, so a short gap
                # between two copied stretches does not cost a whole burst of plain decoding. Not in
                # a plain stretch the k chooser asked for (k = 0: speculating does not pay on this
                # target): there a match would only cut the stretch into one-token calls.
                cheap = getattr(self.drafter, "cheap", False)
                resume = self._drafts_again if plain > 1 and cheap and step.k > 0 else None
                async with aclosing(self._plain(committed, max(min(plain, remaining), 1), resume)) as events:
                    async for event in events:
                        produced += len(event.tokens)
                        yield event
                if produced == before:
                    return  # the target ended the sequence on its own (e.g. its context is full)
                continue
            self.target_calls += 1
            started = self.clock()
            verification = await self.target.verify(tuple(committed), draft)
            verify_s = self.clock() - started
            result = accept_round(draft, verification)
            self.rounds += 1
            self.drafted += result.drafted
            self.accepted += result.accepted
            self.on_round(result, draft_s, verify_s)
            self.policy.after_round(result)
            tokens = self._fit(result.tokens, remaining)
            if tokens:
                committed.extend(tokens)
                produced += len(tokens)
                yield CommitEvent(tokens, result, "speculative")
            if result.tie and produced < max_tokens and not self.finished_on_eos:
                # The target's own greedy pick is the only exact answer at a tie (§2.0.5).
                before = produced
                async with aclosing(self._plain(committed, 1)) as events:
                    async for event in events:
                        produced += len(event.tokens)
                        yield event
                if produced == before:
                    return  # the target ended the sequence on its own

    async def _drafts_again(self, committed: list[int]) -> bool:
        """Whether the (cheap) drafter has a proposal after `committed`; a failing one has none."""
        try:
            return bool(await self.drafter.draft(tuple(committed), 1))
        except DraftFailed:
            return False

    async def _plain(self, committed: list[int], max_tokens: int,
                     resume: Callable[[list[int]], Awaitable[bool]] | None = None) -> AsyncGenerator[CommitEvent, None]:
        """Plain target decoding from `committed` (extended in place), one event per token so a
        fall-back keeps streaming token by token; stops early once `resume` says drafting can resume."""
        self.target_calls += 1
        stream = self.target.generate(tuple(committed), max_tokens)
        try:
            async for token in stream:
                committed.append(token)
                self.plain_tokens += 1
                yield CommitEvent(self._fit([token], 1), None, "plain")
                max_tokens -= 1
                # A target that overruns its limit or continues past EOS is cut here, not trusted.
                if self.finished_on_eos or max_tokens == 0:
                    break
                if resume is not None and await resume(committed):
                    self.interrupted_bursts += 1
                    break
        finally:
            # Leaving early (EOS, limit, consumer gone) must end the target's stream now, not at GC.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def _fit(self, tokens: list[int], room: int) -> list[int]:
        """`tokens` cut to `room` and right after the first EOS (tokens past an accepted EOS are
        verified but never part of the output, §2.0.6)."""
        kept = tokens[:room]
        for i, token in enumerate(kept):
            if token in self.eos_ids:
                self.finished_on_eos = True
                return kept[: i + 1]
        return kept
