"""Gateway speculation against the real vLLM CPU server (SmolLM2-135M): batched-prefix verification agrees
with the server's own greedy decoding, and the n-gram drafter's speculative output is the target-alone output,
token for token. Also pins the response shape the emulator copies (token-id batch prompts, "token_id:N")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from gateway_process import GatewayProcess, running
from vllm_server import VLLM_MODEL, VLLMServer, vllm_server  # noqa: F401

from gateway.speculative.coordinator import SpeculativeDecoder
from gateway.speculative.ngram import NgramDrafter
from gateway.speculative.vllm_draft import VllmDrafter
from gateway.speculative.vllm_target import VllmTokenTarget

# Input-grounded prompts (the answer repeats the text), where prompt lookup drafts well.
PROMPTS = [
    "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the river bank.",
    "Copy the list: apples, pears, plums, cherries, apricots, peaches.",
]


def token_ids(server: VLLMServer, text: str) -> list[int]:
    response = httpx.post(server.url + "/tokenize", json={"model": VLLM_MODEL, "prompt": text}, timeout=30)
    assert response.status_code == 200, response.text
    tokens: list[int] = response.json()["tokens"]
    return tokens


def test_a_batch_of_token_id_prompts_answers_one_choice_per_prompt_with_token_ids(
    vllm_server: VLLMServer,  # noqa: F811
) -> None:
    ids = token_ids(vllm_server, PROMPTS[0])
    body: dict[str, Any] = {"model": VLLM_MODEL, "prompt": [ids, ids[:-1]], "max_tokens": 1, "temperature": 0,
                            "logprobs": 1, "return_tokens_as_token_ids": True}
    response = httpx.post(vllm_server.url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert sorted(c["index"] for c in choices) == [0, 1]
    for choice in choices:
        assert choice["logprobs"]["tokens"][0].startswith("token_id:")


async def test_speculation_with_the_ngram_drafter_is_exactly_the_target_alone(
    vllm_server: VLLMServer,  # noqa: F811
) -> None:
    target = VllmTokenTarget(vllm_server.url, VLLM_MODEL)
    try:
        for text in PROMPTS:
            ids = token_ids(vllm_server, text)
            alone = [t async for t in target.generate(ids, 24)]
            assert alone, "the target produced nothing"
            verification = await target.verify(ids, alone[:3])
            assert verification.argmax[:4] == alone[:4]  # one call, the same greedy choices
            decoder = SpeculativeDecoder(NgramDrafter(), target, choose_k=lambda: 4)
            produced: list[int] = []
            async for event in decoder.run(ids, 24):
                produced.extend(event.tokens)
            assert produced == alone, f"speculation diverged for {text!r}"
            assert decoder.target_calls <= len(alone)
    finally:
        await target.aclose()


async def test_prompt_logprobs_verification_agrees_with_the_batched_one_on_the_real_server(
    vllm_server: VLLMServer,  # noqa: F811
) -> None:
    """V-A reads vLLM's prompt_logprobs (rank and logprob per position, two entries so a tie shows); it must
    pick what V-B's batch of prefixes picks, and speculation over it must give the target-alone ids."""
    batched = VllmTokenTarget(vllm_server.url, VLLM_MODEL)
    single = VllmTokenTarget(vllm_server.url, VLLM_MODEL, prompt_logprobs_below=4096)
    try:
        for text in PROMPTS:
            ids = token_ids(vllm_server, text)
            alone = [t async for t in batched.generate(ids, 24)]
            for draft in (alone[:5], [*alone[:2], (alone[2] + 1) % 49152, *alone[3:5]]):
                a, b = await single.verify(ids, draft), await batched.verify(ids, draft)
                # Position by position; V-A says None where it sees a tie (then the target decodes it).
                assert len(a.argmax) == len(b.argmax) == len(draft) + 1
                assert all(x is None or x == y for x, y in zip(a.argmax, b.argmax, strict=True)), (a, b)
                assert sum(x is None for x in a.argmax) <= 1
            decoder = SpeculativeDecoder(NgramDrafter(), single, choose_k=lambda: 4)
            produced = [t async for event in decoder.run(ids, 24) for t in event.tokens]
            assert produced == alone, f"V-A speculation diverged for {text!r}"
    finally:
        await batched.aclose()
        await single.aclose()


async def test_the_real_server_as_its_own_drafter_is_exact_and_fully_accepted(
    vllm_server: VLLMServer,  # noqa: F811
) -> None:
    """VllmDrafter on a real vLLM: the same model drafting for itself, so every draft is the target's own
    greedy continuation (acceptance ~1: a decode step and a batched prefill may round a near-tie apart) and
    the output is the target-alone output."""
    target = VllmTokenTarget(vllm_server.url, VLLM_MODEL)
    drafter = VllmDrafter(vllm_server.url, VLLM_MODEL)
    try:
        ids = token_ids(vllm_server, PROMPTS[1])
        alone = [t async for t in target.generate(ids, 24)]
        decoder = SpeculativeDecoder(drafter, target, choose_k=lambda: 4)
        produced = [t async for event in decoder.run(ids, 24) for t in event.tokens]
        assert produced == alone
        assert decoder.drafted > 0 and decoder.accepted >= 0.9 * decoder.drafted, (decoder.accepted, decoder.drafted)
    finally:
        await target.aclose()
        await drafter.aclose()


def test_the_gateway_speculates_on_the_real_vllm_server_and_answers_what_it_alone_would(
    vllm_server: VLLMServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Chat rendered by vLLM's /tokenize (messages), verified tokens detokenized by its /detokenize, through
    the gateway with the openai SDK: the same text and token count as vLLM's own chat route."""
    config = {
        "backends": [{"name": "vllm", "plugin": "vllm", "model": VLLM_MODEL, "url": vllm_server.url,
                      "timeouts": {"first_token_s": 120, "total_s": 300}}],
        "routes": [{"model": "fast", "backends": ["vllm"], "speculative": {"target": "vllm", "draft": "ngram"}},
                   {"model": "plain", "backends": ["vllm"]}],
    }
    with running(GatewayProcess(config, tmp_path)) as process:
        assert isinstance(process, GatewayProcess)
        gw = process.wait_ready(120)
        pair = httpx.get(gw.url + "/admin/speculative", timeout=10).json()["pairs"][0]
        assert pair["state"] == "ready", pair
        client = gw.client(timeout=120)
        for text in PROMPTS:
            messages = [{"role": "user", "content": text}]
            plain = client.chat.completions.create(model="plain", messages=messages, temperature=0, max_tokens=24)
            raw = client.chat.completions.with_raw_response.create(model="fast", messages=messages, temperature=0,
                                                                   max_tokens=24)
            fast = raw.parse()
            assert "rounds=" in raw.headers["x-gateway-speculative"]
            assert fast.choices[0].message.content == plain.choices[0].message.content
            assert fast.usage is not None and plain.usage is not None
            assert fast.usage.completion_tokens == plain.usage.completion_tokens
            assert fast.usage.prompt_tokens == plain.usage.prompt_tokens
            assert fast.choices[0].finish_reason == plain.choices[0].finish_reason
        report = httpx.get(gw.url + "/admin/speculative", timeout=10).json()["pairs"][0]
        assert report["requests"] == len(PROMPTS) and report["accepted"] > 0, report
