"""`SpeculationPolicy`: the burst schedule after empty drafts (4 empties -> one generate(…, 16) call,
doubling while drafts stay empty, reset by an accepted draft), AdaptiveK's k = 0 honoured, and the
decoder's use of it (exact output, bursts counted, never more than the tokens still wanted)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gateway.speculative.adaptive_k import AdaptiveK, SpeculationPrior
from gateway.speculative.coordinator import CommitEvent, SpeculativeDecoder
from gateway.speculative.interfaces import RoundResult
from gateway.speculative.policy import SpeculationPolicy, Step

from .speculative_emulators import EmptyDrafter, EmulatedTarget, NextToken, PerfectDrafter, markov_next_token

VOCAB = 5
TABLE = [1, 2, 3, 0, 1, 2, 3, 0, 1, 3, 2, 0, 3, 1, 2, 0, 2, 3, 1, 0, 1, 1, 1, 1, 1]
PROMPT = [1, 2]
next_token = markov_next_token(TABLE, VOCAB)


class ScriptedDrafter:
    """Empty on the 1-based calls in `empty_on`; otherwise the target's continuation, or (with
    `wrong_on`) a draft whose first token is already wrong."""

    name = "scripted"

    def __init__(self, function: NextToken, empty_on: set[int], wrong_on: frozenset[int] = frozenset()) -> None:
        self.function = function
        self.empty_on = empty_on
        self.wrong_on = wrong_on
        self.calls = 0

    async def draft(self, committed: Sequence[int], k: int) -> list[int]:
        self.calls += 1
        if self.calls in self.empty_on:
            return []
        sequence = list(committed)
        for _ in range(k):
            sequence.append(self.function(sequence))
        draft = sequence[len(committed):]
        if self.calls in self.wrong_on:
            draft[0] = (draft[0] + 1) % VOCAB
        return draft


async def decode(decoder: SpeculativeDecoder, prompt: Sequence[int], max_tokens: int) -> list[CommitEvent]:
    return [event async for event in decoder.run(prompt, max_tokens)]


def output_of(events: list[CommitEvent]) -> list[int]:
    return [token for event in events for token in event.tokens]


def round_result(accepted: int, drafted: int = 4) -> RoundResult:
    return RoundResult(tokens=[0] * (accepted + 1), accepted=accepted, drafted=drafted, tie=False)


def test_four_empty_drafts_then_bursts_that_double_up_to_the_cap() -> None:
    policy = SpeculationPolicy(lambda: 4)
    assert policy.next_step() == Step(4)
    assert [policy.after_empty_draft() for _ in range(10)] == [1, 1, 1, 16, 32, 64, 128, 128, 128, 128]
    assert policy.bursts == 7


def test_an_accepted_draft_resets_the_schedule_and_a_rejected_one_only_the_streak() -> None:
    policy = SpeculationPolicy(lambda: 4)
    assert [policy.after_empty_draft() for _ in range(5)] == [1, 1, 1, 16, 32]
    policy.after_round(round_result(accepted=0))  # a draft came back, but nothing was accepted
    assert [policy.after_empty_draft() for _ in range(4)] == [1, 1, 1, 64]
    policy.after_round(round_result(accepted=2))
    assert [policy.after_empty_draft() for _ in range(5)] == [1, 1, 1, 16, 32]
    policy.reset()
    assert (policy.after_empty_draft(), policy.bursts) == (1, 0)


def test_without_max_empty_drafts_an_empty_draft_is_always_one_plain_step() -> None:
    policy = SpeculationPolicy(lambda: 4, max_empty_drafts=None)
    assert [policy.after_empty_draft() for _ in range(20)] == [1] * 20


@pytest.mark.parametrize(
    "kwargs", [{"max_empty_drafts": 0}, {"plain_burst": 0}, {"plain_burst": 32, "max_plain_burst": 16}]
)
def test_bad_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        SpeculationPolicy(lambda: 4, **kwargs)


def test_the_decoder_needs_exactly_one_of_choose_k_and_policy() -> None:
    target = EmulatedTarget(next_token)
    with pytest.raises(TypeError):
        SpeculativeDecoder(EmptyDrafter(), target)
    with pytest.raises(TypeError):
        SpeculativeDecoder(EmptyDrafter(), target, choose_k=lambda: 4, policy=SpeculationPolicy(lambda: 4))


async def test_empty_drafts_stream_bursts_in_one_call_each_never_past_max_tokens() -> None:
    target = EmulatedTarget(next_token)
    drafter = EmptyDrafter()
    decoder = SpeculativeDecoder(drafter, target, policy=SpeculationPolicy(lambda: 4))
    events = await decode(decoder, PROMPT, 100)
    assert output_of(events) == target.greedy(PROMPT, 100)
    # 3 single steps, then bursts of 16 and 32; the 64 is cut to the 49 tokens still wanted.
    assert target.generate_limits == [1, 1, 1, 16, 32, 49]
    assert (drafter.calls, target.verify_calls, decoder.plain_bursts, decoder.plain_tokens) == (6, 0, 3, 100)
    assert all(event.source == "plain" and len(event.tokens) == 1 for event in events)  # still streamed


async def test_bursts_stop_doubling_at_the_cap_and_the_last_token_is_not_drafted() -> None:
    target = EmulatedTarget(next_token)
    decoder = SpeculativeDecoder(EmptyDrafter(), target, policy=SpeculationPolicy(lambda: 4))
    events = await decode(decoder, PROMPT, 500)
    assert output_of(events) == target.greedy(PROMPT, 500)
    assert target.generate_limits == [1, 1, 1, 16, 32, 64, 128, 128, 128, 1]
    assert decoder.plain_bursts == 6


async def test_an_accepted_draft_restarts_the_bursts_at_sixteen() -> None:
    target = EmulatedTarget(next_token)
    # Calls 1-4 empty (burst 16), 5 empty again (burst 32), 6 accepted (k=4: 5 tokens), 7-10 empty.
    drafter = ScriptedDrafter(next_token, empty_on={1, 2, 3, 4, 5, 7, 8, 9, 10})
    decoder = SpeculativeDecoder(drafter, target, policy=SpeculationPolicy(lambda: 4))
    events = await decode(decoder, PROMPT, 80)
    assert output_of(events) == target.greedy(PROMPT, 80)
    assert target.generate_limits[:9] == [1, 1, 1, 16, 32, 1, 1, 1, 16]
    assert target.verify_calls >= 1 and decoder.accepted >= 4
    assert decoder.plain_bursts >= 3


async def test_a_rejected_draft_breaks_the_streak_but_keeps_the_burst_length() -> None:
    target = EmulatedTarget(next_token)
    drafter = ScriptedDrafter(next_token, empty_on={1, 2, 3, 4, 6, 7, 8, 9}, wrong_on=frozenset({5}))
    decoder = SpeculativeDecoder(drafter, target, policy=SpeculationPolicy(lambda: 4))
    events = await decode(decoder, PROMPT, 60)
    assert output_of(events) == target.greedy(PROMPT, 60)
    # Call 5's round commits only the target's correction; the next 4 empties earn the doubled burst.
    assert target.generate_limits[:8] == [1, 1, 1, 16, 1, 1, 1, 32]
    assert (decoder.rounds, decoder.accepted) == (2, 4)  # call 5 rejected, call 10 ends the output


async def test_plain_bursts_are_counted_per_run() -> None:
    target = EmulatedTarget(next_token)
    decoder = SpeculativeDecoder(EmptyDrafter(), target, policy=SpeculationPolicy(lambda: 4))
    await decode(decoder, PROMPT, 40)
    assert decoder.plain_bursts == 2
    await decode(decoder, PROMPT, 10)
    # A new run starts the streak and the schedule over: 3 single steps, then a burst cut to 7.
    assert target.generate_limits[-4:] == [1, 1, 1, 7]
    assert decoder.plain_bursts == 1


def unprofitable_adaptive_k() -> AdaptiveK:
    """A prior where a round can never pay for itself (the call overhead dwarfs a decode step)."""
    adaptive = AdaptiveK(SpeculationPrior(target_token_s=0.001, target_call_s=1.0, verify_token_s=0.001))
    assert adaptive.plain and adaptive.choose() == 0
    return adaptive


def test_k_zero_from_adaptive_k_is_a_plain_stretch_until_its_next_probe() -> None:
    adaptive = unprofitable_adaptive_k()
    policy = SpeculationPolicy(adaptive)
    assert policy.next_step() == Step(0, adaptive.plain_tokens_until_probe)
    adaptive.observe_plain(30, 0.03)
    assert policy.next_step() == Step(0, 2)


def test_a_load_cap_of_zero_is_one_plain_step_at_a_time() -> None:
    adaptive = AdaptiveK(SpeculationPrior(target_token_s=0.025, target_call_s=0.004, verify_token_s=0.0005))
    adaptive.load_cap(0)
    assert not adaptive.plain
    assert SpeculationPolicy(adaptive).next_step() == Step(0, 1)


async def test_k_zero_from_adaptive_k_is_honoured_by_the_decoder() -> None:
    adaptive = unprofitable_adaptive_k()
    target = EmulatedTarget(next_token)
    drafter = PerfectDrafter(next_token)
    decoder = SpeculativeDecoder(drafter, target, policy=SpeculationPolicy(adaptive))
    events = await decode(decoder, PROMPT, 70)
    assert output_of(events) == target.greedy(PROMPT, 70)
    # Never drafted, never verified; nobody reported plain timings here, so every stretch is 32 long.
    assert (drafter.calls, target.verify_calls, decoder.rounds) == (0, 0, 0)
    assert target.generate_limits == [32, 32, 6]
    assert decoder.plain_bursts == 0


class CheapScriptedDrafter(ScriptedDrafter):
    """A ScriptedDrafter that says it costs nothing, so a burst asks it after every token."""

    cheap = True


async def test_a_burst_stops_as_soon_as_a_cheap_drafter_matches_again_and_stays_exact() -> None:
    target = EmulatedTarget(next_token)
    # Calls 1-4: the empty streak that starts a burst; 5-7: asked during the burst (still empty);
    # call 8 (after the burst's 4th token) has a draft again.
    drafter = CheapScriptedDrafter(next_token, empty_on=set(range(1, 8)))
    decoder = SpeculativeDecoder(drafter, target, policy=SpeculationPolicy(lambda: 4))
    events = await decode(decoder, PROMPT, 40)
    assert output_of(events) == target.greedy(PROMPT, 40)
    assert decoder.plain_bursts == 1 and decoder.interrupted_bursts == 1
    assert target.generate_limits[3] == 16  # the burst asked for 16 ...
    assert decoder.plain_tokens == 3 + 4  # ... but ended after 4 tokens: three single steps, then the burst
    assert decoder.rounds > 0


async def test_a_drafter_that_is_not_cheap_is_never_asked_during_a_burst() -> None:
    target = EmulatedTarget(next_token)
    drafter = ScriptedDrafter(next_token, empty_on=set(range(1, 5)))
    decoder = SpeculativeDecoder(drafter, target, policy=SpeculationPolicy(lambda: 4))
    events = await decode(decoder, PROMPT, 40)
    assert output_of(events) == target.greedy(PROMPT, 40)
    assert decoder.interrupted_bursts == 0 and target.generate_limits[3] == 16
    assert decoder.plain_tokens >= 3 + 16  # the whole burst (and maybe a last plain step at max_tokens)


async def test_a_plain_stretch_the_k_chooser_asked_for_is_not_cut_by_a_cheap_drafter() -> None:
    """When speculating does not pay (AdaptiveK plain), a matching n-gram drafter must not split the stretch
    into one-token target calls: measured on a llama.cpp target, that made every token a whole call."""
    adaptive = unprofitable_adaptive_k()
    target = EmulatedTarget(next_token)
    drafter = CheapScriptedDrafter(next_token, empty_on=set())  # always has a draft
    decoder = SpeculativeDecoder(drafter, target, policy=SpeculationPolicy(adaptive))
    events = await decode(decoder, PROMPT, 70)
    assert output_of(events) == target.greedy(PROMPT, 70)
    assert target.generate_limits == [32, 32, 6] and decoder.interrupted_bursts == 0
