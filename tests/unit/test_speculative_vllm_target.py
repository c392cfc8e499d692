"""`VllmTokenTarget` against the vLLM emulator's token-id completions (in-process, no latency):
batched-prefix verification agrees with plain decoding, gateway speculation reproduces the
target-alone output exactly, and the batch answers have vLLM's shape."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from aiohttp.test_utils import TestServer

from gateway.speculative.coordinator import SpeculativeDecoder
from gateway.speculative.interfaces import TargetFailed
from gateway.speculative.ngram import NgramDrafter
from gateway.speculative.vllm_target import VllmTokenTarget
from plugins.emulation import EmulatorRuntime, Fault, Knobs
from plugins.vllm.emulator.app import ServedModel, build_app
from plugins.vllm.emulator.token_model import TokenKnobs, greedy

MODEL = "emulated-gpu"
EOS = 2


def grounded_prompt(seed: int, length: int = 300) -> list[int]:
    """A document, an instruction, and the document's opening token again: the model copies it."""
    rng = random.Random(seed)
    return [3, *(rng.randrange(10, 5000) for _ in range(length)), 4, 5, 6, 7, 3]


def open_prompt(seed: int) -> list[int]:
    rng = random.Random(seed)
    return [5, 6, *(rng.randrange(10, 32_000) for _ in range(30))]


@pytest.fixture
async def emulator() -> AsyncIterator[str]:
    """The emulator's base URL, costs all zero."""
    server = TestServer(build_app(EmulatorRuntime(), ServedModel(name=MODEL), TokenKnobs()), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def target(emulator: str) -> AsyncIterator[VllmTokenTarget]:
    vllm = VllmTokenTarget(emulator, MODEL)
    try:
        yield vllm
    finally:
        await vllm.aclose()


async def generated(target: VllmTokenTarget, prompt: Sequence[int], max_tokens: int) -> list[int]:
    return [token async for token in target.generate(prompt, max_tokens)]


async def test_batch_answer_has_one_choice_per_prompt_with_token_id_logprobs(emulator: str) -> None:
    prompt = grounded_prompt(1, 40)
    body = {"model": MODEL, "prompt": [prompt, [*prompt, 11], [*prompt, 11, 12]], "max_tokens": 1,
            "temperature": 0, "logprobs": 1, "return_tokens_as_token_ids": True}
    async with httpx.AsyncClient(base_url=emulator) as client:
        answer = (await client.post("/v1/completions", json=body)).json()
    assert answer["object"] == "text_completion"
    assert [choice["index"] for choice in answer["choices"]] == [0, 1, 2]
    for choice in answer["choices"]:
        logprobs = choice["logprobs"]
        assert len(logprobs["tokens"]) == 1 and re.fullmatch(r"token_id:\d+", logprobs["tokens"][0])
        assert list(logprobs["top_logprobs"][0]) == logprobs["tokens"]
        assert set(logprobs) == {"text_offset", "token_logprobs", "tokens", "top_logprobs"}
        assert choice["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 3
    first = int(answer["choices"][0]["logprobs"]["tokens"][0].removeprefix("token_id:"))
    assert first == greedy(prompt, 1, TokenKnobs())[0]


async def test_text_prompts_still_get_the_fixed_reply(emulator: str) -> None:
    async with httpx.AsyncClient(base_url=emulator) as client:
        answer = (await client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})).json()
    assert answer["choices"][0]["text"] == "Hello from"


async def test_stream_yields_the_model_greedy_output(target: VllmTokenTarget) -> None:
    prompt = grounded_prompt(2)
    assert await generated(target, prompt, 40) == greedy(prompt, 40, TokenKnobs())


async def test_copy_ends_with_eos_at_the_end_of_the_document(target: VllmTokenTarget) -> None:
    prompt = grounded_prompt(3, 12)
    out = await generated(target, prompt, 100)
    assert out[-1] == EOS and len(out) < 100


async def test_verify_over_a_batch_equals_step_by_step_generate(target: VllmTokenTarget) -> None:
    prompt = grounded_prompt(4)
    plain = await generated(target, prompt, 12)
    verification = await target.verify(prompt, plain[:8])
    assert verification.argmax == plain[:9]
    # A wrong draft: each position is the target's own choice after that (wrong) prefix.
    draft = [17, 18, 19]
    verification = await target.verify(prompt, draft)
    expected = [(await generated(target, [*prompt, *draft[:j]], 1))[0] for j in range(len(draft) + 1)]
    assert verification.argmax == expected


@pytest.mark.parametrize("edit_rate", [0.1, 0.3])
@pytest.mark.parametrize("k", [None, 1, 5])
async def test_speculation_reproduces_target_alone_exactly(emulator: str, edit_rate: float, k: int | None) -> None:
    async with httpx.AsyncClient(base_url=emulator) as client:
        assert (await client.post("/__emulator/knobs", json={"edit_rate": edit_rate})).json()["edit_rate"] == edit_rate
    target = VllmTokenTarget(emulator, MODEL)
    try:
        for prompt in (grounded_prompt(5), grounded_prompt(6, 500), grounded_prompt(7, 20), open_prompt(8)):
            alone = await generated(target, prompt, 80)
            decoder = SpeculativeDecoder(NgramDrafter(), target, choose_k=lambda: 4 if k is None else k,
                                         eos_ids=frozenset({EOS}))
            speculative = [token async for event in decoder.run(prompt, 80) for token in event.tokens]
            assert speculative == alone
            if prompt[0] == 3 and len(prompt) > 100:
                assert decoder.accepted > 0  # the copy was drafted, not all plain steps
    finally:
        await target.aclose()


async def test_server_errors_become_target_failed() -> None:
    runtime = EmulatorRuntime(Knobs(fault=Fault.HTTP_500))
    server = TestServer(build_app(runtime, ServedModel(name=MODEL)), host="127.0.0.1")
    await server.start_server()
    target = VllmTokenTarget(str(server.make_url("")).rstrip("/"), MODEL)
    try:
        with pytest.raises(TargetFailed, match="500"):
            await target.verify([3, 11, 12], [13])
        with pytest.raises(TargetFailed, match="500"):
            await generated(target, [3, 11, 12], 4)
    finally:
        await target.aclose()
        await server.close()


async def test_unreachable_target_fails_with_the_reason() -> None:
    target = VllmTokenTarget("http://127.0.0.1:9", MODEL, timeout_s=5)
    try:
        with pytest.raises(TargetFailed, match="verify call failed"):
            await target.verify([3, 11], [])
    finally:
        await target.aclose()


async def test_knobs_route_sets_token_and_shared_knobs_together(emulator: str) -> None:
    async with httpx.AsyncClient(base_url=emulator) as client:
        knobs = (await client.post("/__emulator/knobs", json={"decode_ms": 1.5, "tpot_ms": 2.0})).json()
        assert (knobs["decode_ms"], knobs["tpot_ms"], knobs["eos_token_id"]) == (1.5, 2.0, EOS)
        refused = await client.post("/__emulator/knobs", json={"decode_ms": "slow", "tpot_ms": 9.0})
        assert refused.status_code == 400
        assert (await client.get("/__emulator/knobs")).json()["tpot_ms"] == 2.0  # nothing applied


async def test_prompt_logprobs_verification_agrees_with_the_batched_one(emulator: str) -> None:
    """V-A (one prompt, prompt_logprobs) and V-B (a batch of prefixes) give the same greedy choices, for
    right drafts, wrong ones and a draft that runs into the document's end (EOS)."""
    batched = VllmTokenTarget(emulator, MODEL)
    single = VllmTokenTarget(emulator, MODEL, prompt_logprobs_below=100_000)
    try:
        prompt = grounded_prompt(4)
        plain = await generated(batched, prompt, 12)
        for draft in (plain[:8], [17, 18, 19], [*plain[:3], 5, *plain[4:7]]):
            a, b = await single.verify(prompt, draft), await batched.verify(prompt, draft)
            assert a.argmax[: len(draft)] == b.argmax[: len(draft)]
            assert a.argmax[-1] == b.argmax[-1]
        short = grounded_prompt(9, 20)
        tail = await generated(batched, short, 40)  # copies to the end of the document, then EOS
        assert tail[-1] == EOS
        draft = tail[-4:]
        before = [*short, *tail[:-4]]
        assert (await single.verify(before, draft)).argmax[:4] == (await batched.verify(before, draft)).argmax[:4]
    finally:
        await batched.aclose()
        await single.aclose()


async def test_speculation_with_prompt_logprobs_is_exact(emulator: str) -> None:
    target = VllmTokenTarget(emulator, MODEL, prompt_logprobs_below=100_000)
    try:
        for prompt in (grounded_prompt(5), grounded_prompt(7, 20), open_prompt(8)):
            alone = await generated(target, prompt, 60)
            decoder = SpeculativeDecoder(NgramDrafter(), target, choose_k=lambda: 4, eos_ids=frozenset({EOS}))
            assert [t async for event in decoder.run(prompt, 60) for t in event.tokens] == alone
    finally:
        await target.aclose()
