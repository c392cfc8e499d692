"""Gateway speculation against the real vLLM CPU server (SmolLM2-135M): batched-prefix verification agrees
with the server's own greedy decoding, and the n-gram drafter's speculative output is the target-alone output,
token for token. Also pins the response shape the emulator copies (token-id batch prompts, "token_id:N")."""

from __future__ import annotations

from typing import Any

import httpx
from vllm_server import VLLM_MODEL, VLLMServer, vllm_server  # noqa: F401

from gateway.speculative.coordinator import SpeculativeDecoder
from gateway.speculative.ngram import NgramDrafter
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
