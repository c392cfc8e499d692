"""`SpeculativeDecoder` on emulated targets and drafters: the output is always the target-alone greedy
output (the exactness property, with the bare `choose_k` and under a `SpeculationPolicy`), rounds
cost what they should, and failures go where they should."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.speculative.coordinator import CommitEvent, RoundObserver, SpeculativeDecoder
from gateway.speculative.interfaces import Drafter, RoundResult, TargetFailed, Verification
from gateway.speculative.policy import SpeculationPolicy

from .speculative_emulators import (
    EmptyDrafter,
    EmulatedTarget,
    FailingDrafter,
    NextToken,
    PerfectDrafter,
    RandomDrafter,
    WrongAfterDrafter,
    markov_next_token,
)

EmulatedDrafter = PerfectDrafter | WrongAfterDrafter | RandomDrafter | EmptyDrafter | FailingDrafter

VOCAB = 5
# A fixed table whose walk from PROMPT never reaches token 4, so token 4 can serve as an EOS that is
# only ever committed when a drafter proposes it.
TABLE = [1, 2, 3, 0, 1, 2, 3, 0, 1, 3, 2, 0, 3, 1, 2, 0, 2, 3, 1, 0, 1, 1, 1, 1, 1]
PROMPT = [1, 2]
next_token = markov_next_token(TABLE, VOCAB)


class TickingClock:
    """Advances one second per reading, so every measured span is a known number of readings."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


async def decode(decoder: SpeculativeDecoder, prompt: Sequence[int], max_tokens: int) -> list[CommitEvent]:
    return [event async for event in decoder.run(prompt, max_tokens)]


def output_of(events: list[CommitEvent]) -> list[int]:
    return [token for event in events for token in event.tokens]


def decoder_for(
    drafter: Drafter,
    target: EmulatedTarget,
    k: int | Sequence[int] = 4,
    *,
    eos_ids: frozenset[int] = frozenset(),
    on_round: RoundObserver | None = None,
    clock: TickingClock | None = None,
) -> SpeculativeDecoder:
    """A decoder whose k choices cycle through `k`."""
    ks = itertools.cycle([k] if isinstance(k, int) else list(k))
    return SpeculativeDecoder(
        drafter, target, choose_k=lambda: next(ks), eos_ids=eos_ids,
        on_round=on_round or (lambda result, draft_s, verify_s: None), clock=clock or TickingClock(),
    )


async def test_perfect_drafter_needs_one_target_call_per_k_plus_one_tokens() -> None:
    target = EmulatedTarget(next_token)
    decoder = decoder_for(PerfectDrafter(next_token), target, k=4)
    events = await decode(decoder, PROMPT, 100)
    assert output_of(events) == target.greedy(PROMPT, 100)
    assert target.calls == decoder.target_calls == 20
    assert (decoder.rounds, decoder.drafted, decoder.accepted, decoder.plain_tokens) == (20, 80, 80, 0)
    assert all(event.source == "speculative" and len(event.tokens) == 5 for event in events)
    assert decoder.fallback_reason is None


async def test_wrong_drafter_is_exact_in_at_most_max_tokens_calls() -> None:
    for m in (0, 1, 2):
        target = EmulatedTarget(next_token)
        decoder = decoder_for(WrongAfterDrafter(next_token, m, VOCAB), target, k=4)
        events = await decode(decoder, PROMPT, 37)
        assert output_of(events) == target.greedy(PROMPT, 37)
        assert target.calls <= 37
        assert decoder.accepted <= m * decoder.rounds


async def test_max_tokens_shortens_the_last_round() -> None:
    target = EmulatedTarget(next_token)
    decoder = decoder_for(PerfectDrafter(next_token), target, k=4)
    events = await decode(decoder, PROMPT, 13)
    assert output_of(events) == target.greedy(PROMPT, 13)
    # 5 + 5 + 3: the last draft holds only the 2 tokens that can still be committed, plus the bonus.
    assert [len(event.tokens) for event in events] == [5, 5, 3]
    assert decoder.drafted == 10


async def test_eos_inside_an_accepted_block_ends_the_output_right_after_it() -> None:
    def with_eos(prefix: Sequence[int]) -> int:
        return 4 if len(prefix) == 5 else next_token(prefix)

    target = EmulatedTarget(with_eos, eos_ids=frozenset({4}))
    decoder = decoder_for(PerfectDrafter(with_eos), target, k=4, eos_ids=frozenset({4}))
    events = await decode(decoder, PROMPT, 50)
    output = output_of(events)
    assert output == target.greedy(PROMPT, 50)
    assert output[-1] == 4 and len(output) == 4
    # The round verified 4 drafts (EOS and what follows it) and the bonus; only 4 tokens survive.
    assert events[0].round is not None and len(events[0].round.tokens) == 5
    assert decoder.finished_on_eos


async def test_draft_failure_switches_to_plain_from_the_committed_tokens() -> None:
    target = EmulatedTarget(next_token)
    decoder = decoder_for(FailingDrafter(PerfectDrafter(next_token), fail_on_call=3), target, k=4)
    events = await decode(decoder, PROMPT, 30)
    assert output_of(events) == target.greedy(PROMPT, 30)
    assert decoder.fallback_reason == "draft_failed"
    assert decoder.fallback_detail is not None and "call 3" in decoder.fallback_detail
    assert [event.source for event in events] == ["speculative"] * 2 + ["plain"] * 20
    # One streaming call for the rest: 2 rounds + 1 generate, asked for exactly what was left.
    assert (target.verify_calls, target.generate_calls, target.generate_limits) == (2, 1, [20])
    assert decoder.plain_tokens == 20


async def test_target_failure_propagates_after_the_committed_prefix() -> None:
    target = EmulatedTarget(next_token, fail_on_call=3)
    decoder = decoder_for(PerfectDrafter(next_token), target, k=4)
    seen: list[int] = []
    with pytest.raises(TargetFailed):
        async for event in decoder.run(PROMPT, 30):
            seen.extend(event.tokens)
    assert seen == target.greedy(PROMPT, 10)


async def test_target_failure_in_plain_mode_propagates() -> None:
    target = EmulatedTarget(next_token, fail_on_call=1)
    decoder = decoder_for(EmptyDrafter(), target, k=4)
    with pytest.raises(TargetFailed):
        await decode(decoder, PROMPT, 5)


async def test_empty_drafts_and_k_zero_take_plain_steps() -> None:
    for drafter, k in ((EmptyDrafter(), 4), (PerfectDrafter(next_token), 0)):
        target = EmulatedTarget(next_token)
        decoder = decoder_for(drafter, target, k=k)
        events = await decode(decoder, PROMPT, 6)
        assert output_of(events) == target.greedy(PROMPT, 6)
        assert (target.generate_calls, target.verify_calls, decoder.rounds) == (6, 0, 0)
        assert target.generate_limits == [1] * 6
        assert all(event.source == "plain" and event.round is None for event in events)
        assert decoder.fallback_reason is None


async def test_a_tie_is_generated_by_the_target_then_speculation_resumes() -> None:
    target = EmulatedTarget(next_token, tie_at=frozenset({len(PROMPT) + 2}))
    decoder = decoder_for(PerfectDrafter(next_token), target, k=4)
    events = await decode(decoder, PROMPT, 10)
    assert output_of(events) == target.greedy(PROMPT, 10)
    assert [(event.source, len(event.tokens)) for event in events] == [("speculative", 2), ("plain", 1),
                                                                        ("speculative", 5), ("speculative", 2)]
    assert events[0].round is not None and events[0].round.tie


async def test_on_round_sees_every_round_with_clock_spans() -> None:
    reported: list[tuple[RoundResult, float, float]] = []
    target = EmulatedTarget(next_token)
    decoder = decoder_for(
        WrongAfterDrafter(next_token, 1, VOCAB), target, k=3,
        on_round=lambda result, draft_s, verify_s: reported.append((result, draft_s, verify_s)),
        clock=TickingClock(),
    )
    events = await decode(decoder, PROMPT, 6)
    assert [result for result, _, _ in reported] == [event.round for event in events]
    assert all((draft_s, verify_s) == (1.0, 1.0) for _, draft_s, verify_s in reported)
    assert len(reported) == decoder.rounds == 3


async def test_a_second_run_starts_fresh_counters() -> None:
    target = EmulatedTarget(next_token)
    decoder = decoder_for(PerfectDrafter(next_token), target, k=4)
    await decode(decoder, PROMPT, 10)
    events = await decode(decoder, [3, 3], 5)
    assert output_of(events) == target.greedy([3, 3], 5)
    assert (decoder.rounds, decoder.target_calls) == (1, 1)


@dataclass(frozen=True)
class Scenario:
    """One randomized run: a target function, where it ties and stops, a drafter, the k choices."""

    vocab: int
    table: list[int]
    prompt: list[int]
    eos_ids: frozenset[int]
    tie_at: frozenset[int]
    truncate: bool
    ks: list[int]
    max_tokens: int
    drafter: str
    accuracy: float
    m: int
    fail_draft_on: int | None
    seed: int
    # (max_empty_drafts, plain_burst, max_plain_burst) for a SpeculationPolicy, None for the bare choose_k.
    policy: tuple[int, int, int] | None = None


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    vocab = draw(st.integers(2, 5))
    return Scenario(
        vocab=vocab,
        table=draw(st.lists(st.integers(0, vocab - 1), min_size=vocab * vocab, max_size=vocab * vocab)),
        prompt=draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=4)),
        eos_ids=frozenset(draw(st.sets(st.integers(0, vocab - 1), max_size=1))),
        tie_at=frozenset(draw(st.sets(st.integers(1, 30), max_size=4))),
        truncate=draw(st.booleans()),
        ks=draw(st.lists(st.integers(0, 6), min_size=1, max_size=5)),
        max_tokens=draw(st.integers(0, 25)),
        drafter=draw(st.sampled_from(["perfect", "wrong", "random", "empty"])),
        accuracy=draw(st.sampled_from([0.0, 0.5, 0.9, 1.0])),
        m=draw(st.integers(0, 4)),
        fail_draft_on=draw(st.one_of(st.none(), st.integers(1, 6))),
        seed=draw(st.integers(0, 2**16)),
        policy=draw(st.one_of(
            st.none(),
            st.tuples(st.integers(1, 4), st.integers(1, 8), st.integers(0, 8)).map(
                lambda t: (t[0], t[1], t[1] + t[2])
            ),
        )),
    )


class BoundedTarget(EmulatedTarget):
    """An `EmulatedTarget` that fails the test when a call could produce more than the output still
    wanted: a verify of d drafts commits up to d + 1 tokens, a generate up to its `max_tokens`."""

    def __init__(self, *args: object, prompt_len: int, max_tokens: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.prompt_len = prompt_len
        self.max_total = max_tokens

    def _room(self, committed: Sequence[int]) -> int:
        return self.max_total - (len(committed) - self.prompt_len)

    async def verify(self, committed: Sequence[int], draft: Sequence[int]) -> Verification:
        assert 1 <= len(draft) + 1 <= self._room(committed)
        return await super().verify(committed, draft)

    def generate(self, committed: Sequence[int], max_tokens: int):  # type: ignore[no-untyped-def]
        assert 1 <= max_tokens <= self._room(committed)
        return super().generate(committed, max_tokens)


def drafter_for(scenario: Scenario, function: NextToken) -> EmulatedDrafter:
    drafter: EmulatedDrafter
    if scenario.drafter == "perfect":
        drafter = PerfectDrafter(function)
    elif scenario.drafter == "wrong":
        drafter = WrongAfterDrafter(function, scenario.m, scenario.vocab)
    elif scenario.drafter == "random":
        drafter = RandomDrafter(random.Random(scenario.seed), scenario.vocab, function, scenario.accuracy)
    else:
        drafter = EmptyDrafter()
    if scenario.fail_draft_on is not None:
        drafter = FailingDrafter(drafter, scenario.fail_draft_on)
    return drafter


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
async def test_output_is_always_the_target_alone_greedy_output(scenario: Scenario) -> None:
    function = markov_next_token(scenario.table, scenario.vocab)
    target = BoundedTarget(function, eos_ids=scenario.eos_ids, tie_at=scenario.tie_at, truncate=scenario.truncate,
                           prompt_len=len(scenario.prompt), max_tokens=scenario.max_tokens)
    drafter = drafter_for(scenario, function)
    if scenario.policy is None:
        decoder = decoder_for(drafter, target, k=scenario.ks, eos_ids=scenario.eos_ids)
    else:
        max_empty, burst, max_burst = scenario.policy
        ks = itertools.cycle(scenario.ks)
        policy = SpeculationPolicy(lambda: next(ks), max_empty_drafts=max_empty, plain_burst=burst,
                                   max_plain_burst=max_burst)
        decoder = SpeculativeDecoder(drafter, target, policy=policy, eos_ids=scenario.eos_ids, clock=TickingClock())

    events = await decode(decoder, scenario.prompt, scenario.max_tokens)

    assert output_of(events) == target.greedy(scenario.prompt, scenario.max_tokens)
    assert all(event.tokens for event in events)
    assert decoder.target_calls == target.calls
    assert decoder.plain_tokens == sum(len(event.tokens) for event in events if event.source == "plain")
    assert decoder.accepted <= decoder.drafted
    if decoder.fallback_reason is not None:
        # Never asked again after failing: the rest came from one plain stream.
        assert drafter.calls == scenario.fail_draft_on
    if scenario.policy is None:
        assert decoder.plain_bursts == 0
    # Every plain burst is one generate call (BoundedTarget checked that none asked past max_tokens).
    assert decoder.plain_bursts <= target.generate_calls
