"""Gateway speculation against a real llama.cpp server (llama-server from the xllamacpp wheel, SmolLM2-135M
Q4_1): parallel-slot verification (§2.4) agrees with the server's own greedy decoding, the decoder's output
with n-gram drafts or with the same model drafting is the target-alone output token for token, end tokens
are learned from `stop_type`, and failures surface as `TargetFailed` / `DraftFailed`.

"Target alone" is what a client gets from the server without the gateway: one /completion with the
same token-id prompt, temperature 0 and the server's default sampler chain. The comparison is exact
(no tolerance), so a prefill-vs-decode numerics flip (§2.6: llama.cpp warns that prompt and generation
logits are not bit-identical) would fail a test and name the prompt and position.

The server runs with 9 slots (the target verifies on slots 0..7, the model drafter drafts on slot 8)
and 1024 context tokens per slot.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from gateway_process import ManagedSubprocess, closed_port, free_port

from gateway.speculative.coordinator import SpeculativeDecoder
from gateway.speculative.interfaces import DraftFailed, TargetFailed
from gateway.speculative.llamacpp_draft import LlamaCppDrafter
from gateway.speculative.llamacpp_target import LlamaCppSlotTarget
from gateway.speculative.ngram import NgramDrafter
from gateway.speculative.verify import accept_round

SLOTS = 9
CTX_PER_SLOT = 1024
DRAFT_SLOT = SLOTS - 1
IM_END = 2  # SmolLM2's <|im_end|>, the GGUF's eos_token

PARAGRAPH = (
    "The lighthouse stood on a rocky point at the end of the bay. Every evening the keeper climbed the "
    "ninety steps to light the lamp, and every morning he wrote the weather in a small blue book."
)
SAY_HI = "Say hi."  # SmolLM2 answers in 25 tokens and ends on <|im_end|>
COPY_EDIT = f"Copy this paragraph exactly, changing 'keeper' to 'guardian':\n\n{PARAGRAPH}"
OPEN = "Write a short poem about the sea."


class SlotServer(ManagedSubprocess):
    """llama-server via the gateway's launcher, with enough slots for k+1 parallel verify requests."""

    def __init__(self, model_path: Path, port: int, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        # One thread: the 2-core machine is shared and llama.cpp's threads spin-wait, so two servers with two
        # threads each ran this module ~7x slower (101 s vs 14 s). The slots share the context (1024 each).
        argv = [sys.executable, "-m", "plugins.llamacpp.launcher", "--model", str(model_path), "--host", "127.0.0.1",
                "--port", str(port), "--ctx", str(SLOTS * CTX_PER_SLOT), "--threads", "1",
                "--parallel", str(SLOTS)]
        super().__init__("llama.cpp slot server", argv, log_path)


@pytest.fixture(scope="module")
def slot_server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a llama-server with 9 slots, for this module."""
    server = SlotServer(smollm2_path, free_port(), tmp_path_factory.mktemp("llama-slots") / "llama-server.log")
    try:
        server.wait_http(server.url + "/health", 120, lambda r: r.status_code == 200)
    except Exception as err:
        server.stop()
        pytest.fail(str(err), pytrace=False)
    yield server.url
    server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as shared:
        yield shared


async def chat_ids(url: str, content: str) -> list[int]:
    """The user message rendered with the server's own template, as ids (§2.0.1), BOS included by it."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        rendered = await client.post("/apply-template", json={"messages": [{"role": "user", "content": content}]})
        assert rendered.status_code == 200, rendered.text
        tokens = await client.post("/tokenize", json={"content": rendered.json()["prompt"], "parse_special": True,
                                                      "add_special": False})
        assert tokens.status_code == 200, tokens.text
    ids: list[int] = tokens.json()["tokens"]
    return ids


async def target_alone(url: str, ids: list[int], n: int) -> tuple[list[int], str]:
    """Plain greedy decoding as a client without the gateway asks for it: the output ids and stop_type."""
    body: dict[str, Any] = {"prompt": ids, "n_predict": n, "temperature": 0, "return_tokens": True}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        response = await client.post("/completion", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    return answer["tokens"], answer["stop_type"]


async def decoded(decoder: SpeculativeDecoder, ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    async for event in decoder.run(ids, n):
        out.extend(event.tokens)
    return out


def first_difference(got: list[int], want: list[int]) -> str:
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return f"first difference at output position {at}: got {got[at:at + 4]} want {want[at:at + 4]}"


async def test_props_give_the_slot_count_and_the_eos_id(slot_server: str, session: aiohttp.ClientSession) -> None:
    target = LlamaCppSlotTarget(slot_server, session=session)
    assert target.max_draft is None  # not read yet
    await target.load_props()
    assert target.slots == SLOTS and target.max_draft == SLOTS - 1
    assert target.eos_ids == {IM_END}
    offset = LlamaCppSlotTarget(slot_server, session=session, first_slot=DRAFT_SLOT)
    await offset.load_props()
    assert offset.slots == 1 and offset.max_draft == 0


@pytest.mark.parametrize("content", [SAY_HI, COPY_EDIT, OPEN], ids=["ends-on-eos", "copy-edit", "open"])
async def test_ngram_speculation_is_exactly_the_target_alone(
    slot_server: str, session: aiohttp.ClientSession, content: str,
) -> None:
    ids = await chat_ids(slot_server, content)
    want, stop_type = await target_alone(slot_server, ids, 64)
    target = LlamaCppSlotTarget(slot_server, session=session, slots=DRAFT_SLOT)
    decoder = SpeculativeDecoder(NgramDrafter(), target, choose_k=lambda: 4, eos_ids=target.eos_ids)
    got = await decoded(decoder, ids, 64)
    assert got == want, f"{content!r}: {first_difference(got, want)}"
    if content == SAY_HI:
        assert stop_type == "eos" and got[-1] == IM_END and decoder.finished_on_eos
    if content == COPY_EDIT:
        # Input-grounded: the paragraph is copied, so prompt lookup drafts and the target accepts.
        assert decoder.accepted > 0 and decoder.target_calls < len(got), (decoder.accepted, decoder.target_calls)


async def test_the_model_drafting_for_itself_is_exact_and_accepted(
    slot_server: str, session: aiohttp.ClientSession,
) -> None:
    """The same server drafts (slot 8) and verifies (slots 0..7): greedy drafts of the same model match."""
    drafter = LlamaCppDrafter(slot_server, session=session, id_slot=DRAFT_SLOT)
    target = LlamaCppSlotTarget(slot_server, session=session, slots=DRAFT_SLOT)
    for content in (SAY_HI, OPEN):
        ids = await chat_ids(slot_server, content)
        want, _ = await target_alone(slot_server, ids, 48)
        decoder = SpeculativeDecoder(drafter, target, choose_k=lambda: 4, eos_ids=target.eos_ids)
        got = await decoded(decoder, ids, 48)
        state = (f"{content!r}: accepted {decoder.accepted}/{decoder.drafted} in {decoder.rounds} rounds, "
                 f"{decoder.target_calls} target calls, fallback {decoder.fallback_reason}: {decoder.fallback_detail}")
        assert got == want, f"{state}; {first_difference(got, want)}"
        assert decoder.fallback_reason is None, state
        assert decoder.drafted > 0 and decoder.accepted >= 0.9 * decoder.drafted, state
        assert decoder.target_calls <= len(got) // 4 + 1, state


async def test_batched_verify_agrees_with_target_alone_at_every_position(
    slot_server: str, session: aiohttp.ClientSession,
) -> None:
    """§5.7: verify(k=4) at every 3rd position of an open-ended answer gives exactly the next 5 tokens of
    target-alone decoding (prefill of a few tokens per slot vs one-token decode steps)."""
    target = LlamaCppSlotTarget(slot_server, session=session, slots=DRAFT_SLOT)
    ids = await chat_ids(slot_server, "Explain photosynthesis in two sentences.")
    want, _ = await target_alone(slot_server, ids, 48)
    for at in range(0, len(want) - 1, 3):
        verification = await target.verify(ids + want[:at], want[at:at + 4])
        expected = want[at:at + 5]
        assert verification.argmax[:len(expected)] == expected, f"verify after output position {at}"


async def test_verify_gives_the_correction_for_a_draft_wrong_at_position_2(
    slot_server: str, session: aiohttp.ClientSession,
) -> None:
    target = LlamaCppSlotTarget(slot_server, session=session, slots=DRAFT_SLOT)
    ids = await chat_ids(slot_server, OPEN)
    want, _ = await target_alone(slot_server, ids, 8)
    wrong = want[2] + 1
    draft = [want[0], want[1], wrong, want[3]]
    verification = await target.verify(ids, draft)
    assert verification.argmax[:3] == want[:3]
    result = accept_round(draft, verification)
    assert result.tokens == want[:3] and result.accepted == 2 and not result.tie


async def test_pinned_slots_reuse_their_cache_between_rounds(
    slot_server: str, session: aiohttp.ClientSession,
) -> None:
    target = LlamaCppSlotTarget(slot_server, session=session, slots=DRAFT_SLOT)
    ids = await chat_ids(slot_server, COPY_EDIT)
    want, _ = await target_alone(slot_server, ids, 12)
    await target.verify(ids, want[:4])
    before_requests, before_evaluated = target.verify_requests, target.verify_evaluated
    await target.verify(ids + want[:3], want[3:7])  # the next round after accepting 2 + a correction
    per_request = (target.verify_evaluated - before_evaluated) / (target.verify_requests - before_requests)
    assert per_request <= 8, f"each slot re-evaluated {per_request:.1f} tokens of a {len(ids) + 3}-token prompt"


async def test_a_draft_longer_than_the_slots_is_verified_up_to_max_draft(
    slot_server: str, session: aiohttp.ClientSession,
) -> None:
    target = LlamaCppSlotTarget(slot_server, session=session, slots=3)
    ids = await chat_ids(slot_server, SAY_HI)
    want, _ = await target_alone(slot_server, ids, 8)
    verification = await target.verify(ids, want[:6])
    assert target.max_draft == 2
    assert verification.argmax == want[:3]
    result = accept_round(want[:6], verification)
    assert result.tokens == want[:3] and result.tie  # the rest is unknown: the decoder asks for it plainly


async def test_eos_is_learned_from_verify_and_from_generate_before_it_is_yielded(
    slot_server: str, session: aiohttp.ClientSession,
) -> None:
    target = LlamaCppSlotTarget(slot_server, session=session, slots=DRAFT_SLOT)
    ids = await chat_ids(slot_server, SAY_HI)
    want, stop_type = await target_alone(slot_server, ids, 64)
    assert stop_type == "eos" and want[-1] == IM_END  # the server includes the end token in `tokens`
    await target.load_props()
    target.eos_ids.clear()  # forget what /props said: the answers alone must teach it
    verification = await target.verify(ids + want[:-2], want[-2:-1])
    assert verification.argmax == want[-2:]
    assert target.eos_ids == {IM_END}
    target.eos_ids.clear()
    seen: list[tuple[int, bool]] = []
    async for token in target.generate(ids, 64):
        seen.append((token, token in target.eos_ids))
    assert [token for token, _ in seen] == want
    assert seen[-1] == (IM_END, True)  # known as an end token when the decoder sees it


async def test_a_target_at_a_closed_port_raises_target_failed(session: aiohttp.ClientSession) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(TargetFailed, match="props"):
        await LlamaCppSlotTarget(url, session=session).verify([1, 2, 3], [4])
    target = LlamaCppSlotTarget(url, session=session, slots=4)
    with pytest.raises(TargetFailed, match="verify prefix 0 failed: ClientConnectorError"):
        await target.verify([1, 2, 3], [4, 5])
    with pytest.raises(TargetFailed, match="generate call failed"):
        _ = [token async for token in target.generate([1, 2, 3], 4)]


async def test_a_server_error_answer_raises_target_failed_with_its_message(
    slot_server: str, session: aiohttp.ClientSession,
) -> None:
    target = LlamaCppSlotTarget(slot_server, session=session, slots=DRAFT_SLOT)
    with pytest.raises(TargetFailed, match="answered 400: Prompt contains invalid tokens"):
        await target.verify([1, 10**8], [5])
    with pytest.raises(TargetFailed, match="answered 400"):
        _ = [token async for token in target.generate([1, 10**8], 4)]


async def test_a_failing_drafter_falls_back_to_exact_plain_decoding(
    slot_server: str, session: aiohttp.ClientSession,
) -> None:
    drafter = LlamaCppDrafter(f"http://127.0.0.1:{closed_port()}", session=session)
    with pytest.raises(DraftFailed, match="draft call failed"):
        await drafter.draft([1, 2, 3], 4)
    ids = await chat_ids(slot_server, SAY_HI)
    want, _ = await target_alone(slot_server, ids, 64)
    target = LlamaCppSlotTarget(slot_server, session=session, slots=DRAFT_SLOT)
    decoder = SpeculativeDecoder(drafter, target, choose_k=lambda: 4, eos_ids=target.eos_ids)
    got = await decoded(decoder, ids, 64)
    assert got == want, first_difference(got, want)
    assert decoder.fallback_reason == "draft_failed" and decoder.rounds == 0
