"""What the coordinator does next each round: draft k tokens, or decode some tokens plainly.

`SpeculationPolicy` combines the k chooser (a bare `choose_k` callable or an `AdaptiveK`: k from the
cost model, 0 = plain) with a miss streak over empty drafts. An empty draft (open-ended text, no
n-gram match) costs a whole target call for the single plain token that follows it, so a request
that keeps missing would pay the target's round trip on every token. After `max_empty_drafts` empty
drafts in a row the policy asks for a plain burst instead: `plain_burst` tokens from ONE streamed
`Target.generate` call, then drafting is tried again. While the first draft after a burst comes back
empty too, the next burst doubles (up to `max_plain_burst`); an accepted draft resets the schedule.

The policy only decides; the coordinator caps every request at the tokens still wanted, so the
output stays the target-alone greedy output whatever the policy says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from gateway.speculative.adaptive_k import AdaptiveK
from gateway.speculative.interfaces import RoundResult

DEFAULT_MAX_EMPTY_DRAFTS = 4
DEFAULT_PLAIN_BURST = 16
DEFAULT_MAX_PLAIN_BURST = 128


class Step(NamedTuple):
    """The next move: `k` > 0 asks the drafter for up to k tokens; `k` == 0 decodes `plain` tokens
    (at least 1) in one target call, without drafting."""

    k: int
    plain: int = 1


class SpeculationPolicy:
    """Chooses each round's move for one request (see the module doc).

    `choose_k`: a callable returning k (0 = one plain step), or an `AdaptiveK`, whose 0 is honoured
    as a plain stretch of `plain_tokens_until_probe` tokens in one call while it is in plain mode
    (`adaptive`: that AdaptiveK, when `choose_k` is a callable wrapping its `choose`).
    `max_empty_drafts`: empty drafts in a row before a burst (None: never burst, one plain step per
    empty draft, the bare behaviour). `plain_burst`: the first burst's length, doubled per burst
    while the draft after it is empty again, up to `max_plain_burst`.

    The coordinator calls `next_step` once per round, then `after_empty_draft` when a draft came back
    empty (it returns how many plain tokens to decode now) or `after_round` after a verified round.
    """

    def __init__(
        self,
        choose_k: Callable[[], int] | AdaptiveK,
        *,
        adaptive: AdaptiveK | None = None,
        max_empty_drafts: int | None = DEFAULT_MAX_EMPTY_DRAFTS,
        plain_burst: int = DEFAULT_PLAIN_BURST,
        max_plain_burst: int = DEFAULT_MAX_PLAIN_BURST,
    ) -> None:
        if max_empty_drafts is not None and max_empty_drafts < 1:
            raise ValueError(f"max_empty_drafts must be >= 1 or None, got {max_empty_drafts}")
        if not 1 <= plain_burst <= max_plain_burst:
            raise ValueError(f"need 1 <= plain_burst <= max_plain_burst, got {plain_burst}, {max_plain_burst}")
        # `adaptive` with a plain callable: the callable decides k (e.g. counting AdaptiveK.choose's
        # answers), the AdaptiveK's plain mode still sets the plain stretch's length.
        self.adaptive = choose_k if isinstance(choose_k, AdaptiveK) else adaptive
        self._choose_k: Callable[[], int] = choose_k.choose if isinstance(choose_k, AdaptiveK) else choose_k
        self.max_empty_drafts = max_empty_drafts
        self.plain_burst = plain_burst
        self.max_plain_burst = max_plain_burst
        self.reset()

    def reset(self) -> None:
        """Forget the miss streak and the burst schedule (a new request, or a new run of one)."""
        self.empty_streak = 0
        self.next_burst = self.plain_burst
        self.bursts = 0

    def next_step(self) -> Step:
        """This round's move. Advances the k chooser (call it once per round, as `AdaptiveK.choose`)."""
        k = max(self._choose_k(), 0)
        if k > 0:
            return Step(k)
        if self.adaptive is not None and self.adaptive.plain:
            # AdaptiveK's 0 means "plain until the next re-probe": one call for the whole stretch.
            return Step(0, max(self.adaptive.plain_tokens_until_probe, 1))
        return Step(0, 1)

    def after_empty_draft(self) -> int:
        """The drafter had nothing: how many plain tokens to decode now in one call (1, or a burst)."""
        self.empty_streak += 1
        if self.max_empty_drafts is None or self.empty_streak < self.max_empty_drafts:
            return 1
        burst = self.next_burst
        self.bursts += 1
        # The streak stays at the threshold: if the draft right after this burst is empty too, the
        # next (doubled) burst follows at once.
        self.empty_streak = self.max_empty_drafts - 1
        self.next_burst = min(burst * 2, self.max_plain_burst)
        return burst

    def after_round(self, result: RoundResult) -> None:
        """A verified round: a draft came back, so the empties are no longer in a row; an accepted
        draft token shows drafting works here again, so the burst length starts over."""
        self.empty_streak = 0
        if result.accepted > 0:
            self.next_burst = self.plain_burst
