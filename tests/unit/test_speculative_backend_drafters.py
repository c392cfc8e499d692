"""Backend drafters against their emulators (in-process, no latency): `VllmDrafter` over the vLLM
emulator's token-id completions, `OllamaDrafter` over the Ollama emulator's raw `/api/generate` through a
fake target tokenizer. Exactness never depends on the drafter; acceptance does."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from aiohttp.test_utils import TestServer

from gateway.speculative.coordinator import SpeculativeDecoder
from gateway.speculative.interfaces import DraftFailed
from gateway.speculative.ollama_draft import OllamaDrafter
from gateway.speculative.probe import TokenizerError
from gateway.speculative.vllm_draft import VllmDrafter
from gateway.speculative.vllm_target import VllmTokenTarget
from plugins.emulation import EmulatorRuntime, Fault, Knobs
from plugins.ollama.emulator.app import OllamaEmulator
from plugins.vllm.emulator.app import ServedModel, build_app
from plugins.vllm.emulator.token_model import TokenKnobs, greedy

from .speculative_emulators import EmulatedTarget

MODEL = "emulated-gpu"
OLLAMA_MODEL = "llama3.2"
EOS = 2
CLOSED = "http://127.0.0.1:9"  # discard port: nothing listens, the connection is refused


def grounded_prompt(seed: int, length: int = 300) -> list[int]:
    """A document, an instruction, and the document's opening token again: the model copies it."""
    rng = random.Random(seed)
    return [3, *(rng.randrange(10, 5000) for _ in range(length)), 4, 5, 6, 7, 3]


async def serve(app: object) -> TestServer:
    server = TestServer(app, host="127.0.0.1")  # type: ignore[arg-type]
    await server.start_server()
    return server


def url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def vllm() -> AsyncIterator[str]:
    """The vLLM emulator's base URL, costs all zero."""
    server = await serve(build_app(EmulatorRuntime(), ServedModel(name=MODEL), TokenKnobs()))
    try:
        yield url(server)
    finally:
        await server.close()


# -- fake target tokenizers -----------------------------------------------------------------------


class PieceCodec:
    """A regex tokenizer over a vocabulary grown on demand; ids from 100 up (below are control ids).

    `dummy_prefix=True` behaves like SentencePiece: tokenizing prepends a space (so a word at the start
    gets its "▁word" form) and detokenizing drops the first piece's leading space. `dummy_prefix=False`
    behaves like a byte-level BPE (GPT/Llama 3): what you tokenize is what you get back. Either way a
    word carries its leading space, and adjacent word characters always form one piece (a "merge").
    """

    PIECE = re.compile(r" ?\w+| ?[^\w\s]|\s")

    def __init__(self, *, dummy_prefix: bool) -> None:
        self.dummy_prefix = dummy_prefix
        self.ids: dict[str, int] = {}
        self.pieces: dict[int, str] = {}
        self.fail = False

    def id(self, piece: str) -> int:
        if piece not in self.ids:
            self.ids[piece] = 100 + len(self.ids)
            self.pieces[self.ids[piece]] = piece
        return self.ids[piece]

    async def tokenize(self, text: str) -> list[int]:
        if self.fail:
            raise TokenizerError("POST /tokenize answered 503")
        return [self.id(piece) for piece in self.PIECE.findall(" " + text if self.dummy_prefix else text)]

    async def detokenize(self, ids: Sequence[int]) -> str:
        if self.fail:
            raise TokenizerError("POST /detokenize answered 503")
        text = "".join(self.pieces[i] for i in ids)
        return text[1:] if self.dummy_prefix and text.startswith(" ") else text


class WordCodec:
    """A whitespace-word tokenizer: one id per word, detokenized with single spaces between."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.words: dict[int, str] = {}

    def id(self, word: str) -> int:
        if word not in self.ids:
            self.ids[word] = 100 + len(self.ids)
            self.words[self.ids[word]] = word
        return self.ids[word]

    async def tokenize(self, text: str) -> list[int]:
        return [self.id(word) for word in text.split()]

    async def detokenize(self, ids: Sequence[int]) -> str:
        return " ".join(self.words[i] for i in ids)


class CharCodec:
    """One id per character."""

    async def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    async def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)


async def ollama_server(knobs: Knobs | None = None) -> tuple[TestServer, OllamaEmulator]:
    emulator = OllamaEmulator(knobs, models=[OLLAMA_MODEL])
    return await serve(emulator.app()), emulator


async def speculate(decoder: SpeculativeDecoder, prompt: Sequence[int], max_tokens: int) -> list[int]:
    return [token async for event in decoder.run(prompt, max_tokens) for token in event.tokens]


# -- VllmDrafter ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 4, 9])
async def test_vllm_draft_is_the_emulator_greedy_continuation(vllm: str, k: int) -> None:
    drafter = VllmDrafter(vllm, MODEL)
    try:
        for prompt in (grounded_prompt(1), grounded_prompt(2, 40), [5, 6, 123, 4567]):
            assert await drafter.draft(prompt, k) == greedy(prompt, k, TokenKnobs())
        assert await drafter.draft(grounded_prompt(1), 0) == []
    finally:
        await drafter.aclose()


async def test_vllm_draft_ends_at_the_draft_models_eos(vllm: str) -> None:
    prompt = grounded_prompt(3, 12)  # a short document: the copy reaches its end marker
    drafter = VllmDrafter(vllm, MODEL)
    try:
        draft = await drafter.draft(prompt, 64)
    finally:
        await drafter.aclose()
    assert draft[-1] == EOS and len(draft) < 64
    assert draft == greedy(prompt, 64, TokenKnobs())


@pytest.mark.parametrize("edit_rate", [0.1, 0.3])
async def test_same_model_as_draft_and_target_is_exact_with_full_acceptance(vllm: str, edit_rate: float) -> None:
    async with httpx.AsyncClient(base_url=vllm) as client:
        assert (await client.post("/__emulator/knobs", json={"edit_rate": edit_rate})).status_code == 200
    drafter, target = VllmDrafter(vllm, MODEL), VllmTokenTarget(vllm, MODEL)
    try:
        for prompt in (grounded_prompt(5), grounded_prompt(6, 20), [5, 6, 77, 888, 9999]):
            alone = [token async for token in target.generate(prompt, 60)]
            decoder = SpeculativeDecoder(drafter, target, choose_k=lambda: 5, eos_ids=frozenset({EOS}))
            assert await speculate(decoder, prompt, 60) == alone
            assert decoder.fallback_reason is None
            assert decoder.rounds > 0 and decoder.accepted == decoder.drafted  # acceptance 1.0
    finally:
        await drafter.aclose()
        await target.aclose()


async def test_vllm_draft_failures_raise_draft_failed() -> None:
    server = await serve(build_app(EmulatorRuntime(Knobs(fault=Fault.HTTP_500)), ServedModel(name=MODEL)))
    ollama, _ = await ollama_server()
    failing, closed = VllmDrafter(url(server), MODEL), VllmDrafter(CLOSED, MODEL, timeout_s=5)
    wrong_server = VllmDrafter(url(ollama), MODEL)
    try:
        with pytest.raises(DraftFailed, match="answered 500"):
            await failing.draft([3, 11, 12], 4)
        with pytest.raises(DraftFailed, match="draft call failed: Client"):
            await closed.draft([3, 11, 12], 4)
        with pytest.raises(DraftFailed, match="answered 404: 404 page not found"):
            await wrong_server.draft([3, 11, 12], 4)
    finally:
        for drafter in (failing, closed, wrong_server):
            await drafter.aclose()
        await server.close()
        await ollama.close()


@pytest.mark.parametrize("drafter_url", ["fault", "closed"])
async def test_failing_vllm_drafter_falls_back_to_plain_and_stays_exact(vllm: str, drafter_url: str) -> None:
    server = await serve(build_app(EmulatorRuntime(Knobs(fault=Fault.HTTP_500)), ServedModel(name=MODEL)))
    drafter = VllmDrafter(url(server) if drafter_url == "fault" else CLOSED, MODEL, timeout_s=5)
    target = VllmTokenTarget(vllm, MODEL)
    try:
        prompt = grounded_prompt(7)
        alone = [token async for token in target.generate(prompt, 40)]
        decoder = SpeculativeDecoder(drafter, target, choose_k=lambda: 4, eos_ids=frozenset({EOS}))
        assert await speculate(decoder, prompt, 40) == alone
        assert decoder.fallback_reason == "draft_failed" and decoder.rounds == 0
        assert decoder.fallback_detail is not None and "draft call" in decoder.fallback_detail
    finally:
        await drafter.aclose()
        await target.aclose()
        await server.close()


# -- OllamaDrafter --------------------------------------------------------------------------------


async def test_ollama_draft_is_the_target_tokens_of_the_emulator_text() -> None:
    server, emulator = await ollama_server()
    codec = WordCodec()
    committed = await codec.tokenize("Summarize the text below please")
    drafter = OllamaDrafter(url(server), OLLAMA_MODEL, codec, options={"num_ctx": 2048})
    try:
        draft = await drafter.draft(committed, 4)
    finally:
        await drafter.aclose()
        await server.close()
    # The emulator's fake model answers with its fixed reply, cut at num_predict of its own tokens.
    assert draft == await codec.tokenize("Hello from the emulator.")
    body = emulator.requests[-1]["body"]
    assert body == {"model": OLLAMA_MODEL, "prompt": "Summarize the text below please", "raw": True,
                    "stream": False, "options": {"num_ctx": 2048, "num_predict": 4, "temperature": 0}}


async def test_ollama_draft_is_capped_to_k_target_tokens() -> None:
    server, _ = await ollama_server()
    codec = CharCodec()
    drafter = OllamaDrafter(url(server), OLLAMA_MODEL, codec)
    try:
        draft = await drafter.draft(await codec.tokenize("Say:"), 3)
    finally:
        await drafter.aclose()
        await server.close()
    # Three of Ollama's tokens ("Hello from the") are 14 characters, so 14 target ids: only k are kept.
    assert draft == [ord(c) for c in "Hel"]


async def test_ollama_draft_is_segmented_behind_the_committed_tail() -> None:
    server, _ = await ollama_server(Knobs(reply="la la la"))
    codec = PieceCodec(dummy_prefix=True)
    drafter = OllamaDrafter(url(server), OLLAMA_MODEL, codec)
    try:
        # "print(" + "la la": behind the tail the reply is "la", " la", as the target would segment the
        # whole text; alone, SentencePiece's dummy prefix would make its first piece " la".
        committed = await codec.tokenize("print(")
        draft = await drafter.draft(committed, 2)
        assert draft == (await codec.tokenize("print(la la"))[len(committed):]
        assert [codec.pieces[i] for i in draft] == ["la", " la"]
        assert (drafter.boundary_drafts, drafter.bare_drafts) == (1, 0)
        # "print(hel" + "la la": the reply's first word merges into the tail's last piece ("hella"), which
        # the target has already committed as "hel": the tail does not come back, the draft is the reply alone.
        committed = await codec.tokenize("print(hel")
        draft = await drafter.draft(committed, 2)
        assert draft == (await codec.tokenize("la la"))[:2]
        assert (drafter.boundary_drafts, drafter.bare_drafts) == (1, 1)
    finally:
        await drafter.aclose()
        await server.close()


async def test_ollama_failures_raise_draft_failed() -> None:
    codec = WordCodec()
    committed = await codec.tokenize("Say something")
    failing, _ = await ollama_server(Knobs(fault=Fault.HTTP_500))
    healthy, _ = await ollama_server()
    drafters = {
        "answered 500": OllamaDrafter(url(failing), OLLAMA_MODEL, codec),
        "answered 404: model 'missing' not found": OllamaDrafter(url(healthy), "missing", codec),
        "draft call failed: Client": OllamaDrafter(CLOSED, OLLAMA_MODEL, codec, timeout_s=5),
    }
    try:
        for reason, drafter in drafters.items():
            with pytest.raises(DraftFailed, match=re.escape(reason)):
                await drafter.draft(committed, 4)
        broken = PieceCodec(dummy_prefix=False)
        broken.fail = True
        with pytest.raises(DraftFailed, match="detokenizing the committed ids failed: POST /detokenize"):
            await OllamaDrafter(url(healthy), OLLAMA_MODEL, broken).draft([100, 101], 4)
    finally:
        for drafter in drafters.values():
            await drafter.aclose()
        await failing.close()
        await healthy.close()


async def test_failing_ollama_drafter_falls_back_to_plain_and_stays_exact() -> None:
    server, _ = await ollama_server(Knobs(fault=Fault.HTTP_503))
    codec = WordCodec()
    la = codec.id("la")
    target = EmulatedTarget(lambda prefix: la, eos_ids=frozenset({EOS}))
    drafter = OllamaDrafter(url(server), OLLAMA_MODEL, codec)
    try:
        prompt = await codec.tokenize("sing")
        decoder = SpeculativeDecoder(drafter, target, choose_k=lambda: 4, eos_ids=frozenset({EOS}))
        assert await speculate(decoder, prompt, 20) == target.greedy(prompt, 20)
        assert decoder.fallback_reason == "draft_failed" and decoder.rounds == 0
    finally:
        await drafter.aclose()
        await server.close()


async def test_ollama_drafter_in_the_decoder_is_exact_with_full_acceptance() -> None:
    server, _ = await ollama_server(Knobs(reply="la"))  # the fake model then says "la la la ..."
    codec = WordCodec()
    la = codec.id("la")
    target = EmulatedTarget(lambda prefix: la, eos_ids=frozenset({EOS}))
    drafter = OllamaDrafter(url(server), OLLAMA_MODEL, codec)
    try:
        prompt = await codec.tokenize("sing along")
        decoder = SpeculativeDecoder(drafter, target, choose_k=lambda: 4, eos_ids=frozenset({EOS}))
        assert await speculate(decoder, prompt, 30) == target.greedy(prompt, 30)
        assert decoder.rounds > 0 and decoder.accepted == decoder.drafted
    finally:
        await drafter.aclose()
        await server.close()


@pytest.mark.parametrize("dummy_prefix", [True, False])
async def test_mis_segmented_drafts_keep_exactness_and_lower_acceptance(dummy_prefix: bool) -> None:
    """The same Ollama text through two tokenizers. The emulator's continuation "la la la" lacks the
    leading space a real model would put after "sing", so it glues onto the committed text: with a
    SentencePiece-like codec the bare re-tokenization gets " la" back from the dummy prefix and every
    draft is accepted; with a byte-level-BPE-like codec the first piece is "la", never what the target
    (" la" after " la") emits, so each round keeps no draft at all. The output is exact either way."""
    server, _ = await ollama_server(Knobs(reply="la"))
    codec = PieceCodec(dummy_prefix=dummy_prefix)
    la = codec.id(" la")
    # The target sings " la" for a while, then stops: the drafts past its EOS are rejected.
    target = EmulatedTarget(lambda prefix: EOS if len(prefix) >= 25 else la, eos_ids=frozenset({EOS}))
    drafter = OllamaDrafter(url(server), OLLAMA_MODEL, codec)
    try:
        prompt = await codec.tokenize("sing la")
        decoder = SpeculativeDecoder(drafter, target, choose_k=lambda: 4, eos_ids=frozenset({EOS}))
        out = await speculate(decoder, prompt, 40)
        assert out == target.greedy(prompt, 40) and out[-1] == EOS
        assert decoder.rounds > 0 and decoder.fallback_reason is None
        if dummy_prefix:
            assert decoder.accepted >= decoder.drafted - 4  # all but the round that crossed the EOS
        else:
            assert decoder.accepted == 0
    finally:
        await drafter.aclose()
        await server.close()
