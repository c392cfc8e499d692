"""`TritonDraftTarget` (native draft verification on Triton's `tensorrt_llm` model) and
`TrtllmServeTokenTarget` (V-B over trtllm-serve's token-id completions) against the TensorRT-LLM
emulators, in-process with zero costs: gateway speculation reproduces the target-alone output exactly,
wrong drafts are corrected, the end token stops, and transport failures become `TargetFailed`."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest

from gateway.speculative.coordinator import SpeculativeDecoder
from gateway.speculative.interfaces import Drafter, TargetFailed
from gateway.speculative.ngram import NgramDrafter
from gateway.speculative.triton_target import TritonDraftTarget
from gateway.speculative.trtllm_serve_target import TrtllmServeTokenTarget
from gateway.speculative.verify import accept_round
from plugins.emulation import Fault, Knobs
from plugins.tensorrt_llm.emulator.inprocess import RunningEmulator, running_emulator
from plugins.vllm.emulator.token_model import TokenKnobs, greedy

EOS = 2
MODEL = "TinyLlama-1.1B-Chat-v1.0"
Target = TritonDraftTarget | TrtllmServeTokenTarget


def grounded_prompt(seed: int, length: int = 200) -> list[int]:
    """A document, an instruction, and the document's opening token again: the model copies it."""
    rng = random.Random(seed)
    return [3, *(rng.randrange(10, 5000) for _ in range(length)), 4, 5, 6, 7, 3]


def ending_prompt(seed: int) -> list[int]:
    """A document that ends with the end-of-document marker (id 1 < SPECIAL_IDS): copying it reaches EOS."""
    rng = random.Random(seed)
    doc = [rng.randrange(10, 5000) for _ in range(12)]
    return [3, *doc, 1, 4, 5, 3]


class FixedDrafter:
    """Drafts the same block after every prefix (a deliberately wrong draft)."""

    name = "fixed"

    def __init__(self, block: Sequence[int]) -> None:
        self.block = list(block)

    async def draft(self, committed: Sequence[int], k: int) -> list[int]:
        return self.block[:k]


@pytest.fixture(params=["triton", "trtllm_serve"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[RunningEmulator, Target]]:
    """Each emulator with its target (end token known to the target)."""
    async with running_emulator(request.param, token_knobs=TokenKnobs(edit_rate=0.05)) as emulator:
        target: Target
        if request.param == "triton":
            target = TritonDraftTarget(emulator.url, end_id=EOS, pad_id=EOS)
        else:
            target = TrtllmServeTokenTarget(emulator.url, MODEL, eos_id=EOS)
        try:
            yield emulator, target
        finally:
            await target.aclose()


async def plain(target: Target, prompt: Sequence[int], max_tokens: int) -> list[int]:
    return [token async for token in target.generate(prompt, max_tokens)]


async def speculate(target: Target, drafter: Drafter, prompt: Sequence[int], max_tokens: int,
                    k: int = 6) -> tuple[list[int], SpeculativeDecoder]:
    decoder = SpeculativeDecoder(drafter, target, choose_k=lambda: k, eos_ids=target.eos_ids)
    out: list[int] = []
    async for event in decoder.run(prompt, max_tokens):
        out.extend(event.tokens)
    return out, decoder


async def test_speculation_reproduces_target_alone(served: tuple[RunningEmulator, Target]) -> None:
    _, target = served
    prompt = grounded_prompt(1)
    alone = await plain(target, prompt, 120)
    # The target's plain decoding is the token model's own greedy output.
    assert alone == greedy(prompt, 120, TokenKnobs(edit_rate=0.05))[: len(alone)]
    out, decoder = await speculate(target, NgramDrafter(), prompt, 120)
    assert out == alone
    assert decoder.accepted > 0
    assert decoder.target_calls < len(out)  # drafts accepted in bulk, not one call per token


async def test_wrong_draft_is_corrected(served: tuple[RunningEmulator, Target]) -> None:
    _, target = served
    prompt = grounded_prompt(2)
    expected = await plain(target, prompt, 4)
    wrong = [expected[0], expected[1], (expected[2] + 1) % 30_000 + 10, 11]
    verification = await target.verify(prompt, wrong)
    result = accept_round(wrong, verification)
    assert result.tokens == expected[:3] and result.accepted == 2 and not result.tie
    out, _ = await speculate(target, FixedDrafter([17, 18, 19]), prompt, 30, k=3)
    assert out == await plain(target, prompt, 30)


async def test_end_token_stops(served: tuple[RunningEmulator, Target]) -> None:
    _, target = served
    prompt = ending_prompt(3)
    alone = await plain(target, prompt, 40)
    assert alone[-1] == EOS and len(alone) < 40
    out, decoder = await speculate(target, NgramDrafter(), prompt, 40)
    assert out == alone and decoder.finished_on_eos
    assert EOS in target.eos_ids
    # A draft that runs past the document's end: the round stops at the end token.
    body = alone[:-1]
    verification = await target.verify(prompt, [*body, 99, 98])
    assert accept_round([*body, 99, 98], verification).tokens == alone


async def test_transport_failure_raises(served: tuple[RunningEmulator, Target]) -> None:
    emulator, target = served
    emulator.runtime.update({"fault": Fault.HTTP_500.value})
    with pytest.raises(TargetFailed):
        await target.verify(grounded_prompt(4), [5, 6])
    with pytest.raises(TargetFailed):
        await plain(target, grounded_prompt(4), 5)
    emulator.runtime.update({"fault": Fault.NONE.value})
    await target.aclose()
    dead = TritonDraftTarget("http://127.0.0.1:9", timeout_s=2.0, end_id=EOS)
    try:
        with pytest.raises(TargetFailed):
            await dead.verify([1, 2, 3], [4])
        with pytest.raises(TargetFailed):
            await plain(dead, [1, 2, 3], 2)
    finally:
        await dead.aclose()


async def test_triton_wire_shape() -> None:
    """The tensorrt_llm model answers with Triton's tensor JSON: output_ids (a bare int for one token),
    sequence_length, the perf outputs when asked; the ensemble still answers text as before."""
    async with running_emulator("triton", Knobs(), token_knobs=TokenKnobs()) as emulator:
        prompt = grounded_prompt(5)
        async with httpx.AsyncClient(base_url=emulator.url) as client:
            one = (await client.post("/v2/models/tensorrt_llm/generate", json={
                "input_ids": prompt, "input_lengths": len(prompt), "request_output_len": 1, "end_id": EOS})).json()
            assert set(one) == {"model_name", "model_version", "output_ids", "sequence_length"}
            assert one["sequence_length"] == len(prompt) + 1 and one["output_ids"][: len(prompt)] == prompt
            nxt = one["output_ids"][-1]
            spec = (await client.post("/v2/models/tensorrt_llm/generate", json={
                "input_ids": prompt, "input_lengths": len(prompt), "request_output_len": 3,
                "draft_input_ids": [nxt, 12], "exclude_input_in_output": True, "return_perf_metrics": True,
                "end_id": EOS})).json()
            assert spec["output_ids"][0] == nxt and spec["total_draft_tokens"] == 2
            missing = await client.post("/v2/models/tensorrt_llm/generate", json={"input_ids": prompt})
            assert missing.status_code == 400 and "missing required input(s) ['input_lengths','request_output_len']" \
                in missing.json()["error"]
            text = await client.post("/v2/models/ensemble/generate", json={"text_input": "hi", "max_tokens": 3})
            assert text.status_code == 200 and "text_output" in text.json()


async def test_trtllm_serve_rejects_vllm_ids_field_and_answers_token_ids() -> None:
    """trtllm-serve has no return_tokens_as_token_ids (extra fields are forbidden), which is why
    VllmTokenTarget cannot drive it; detokenize=false returns token_ids per prompt of a batch."""
    async with running_emulator("trtllm_serve", token_knobs=TokenKnobs()) as emulator:
        prompt = grounded_prompt(6)
        async with httpx.AsyncClient(base_url=emulator.url) as client:
            refused = await client.post("/v1/completions", json={
                "model": MODEL, "prompt": prompt, "max_tokens": 1, "return_tokens_as_token_ids": True})
            assert refused.status_code == 400 and "extra_forbidden" in refused.text
            answer = (await client.post("/v1/completions", json={
                "model": MODEL, "prompt": [prompt, prompt[:-1]], "max_tokens": 1, "detokenize": False})).json()
        assert [c["index"] for c in answer["choices"]] == [0, 1]
        assert all(c["text"] == "" and len(c["token_ids"]) == 1 for c in answer["choices"])
        assert answer["prompt_token_ids"] == []
