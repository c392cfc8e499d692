"""Which speculative client speaks to which backend plugin (reference §5.1's tables).

Targets: vLLM (batched-prefix verification), trtllm-serve (the same protocol), Triton's
`tensorrt_llm` model (native `draft_input_ids`), llama.cpp (one pinned slot per prefix).
Drafters: the n-gram drafter (no backend), llama.cpp and vLLM (token-id prompts), Ollama (text).
The tokenizer (chat rendering, detokenizing) is the target's where its server has one, else the
draft backend's: the probe checks that their ids agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import aiohttp

from gateway.backend import Backend
from gateway.speculative.codec import ChatCodec, LlamaCppCodec, VllmCodec
from gateway.speculative.interfaces import Drafter, Target
from gateway.speculative.ngram import NgramDrafter
from gateway.speculative.settings import NGRAM

DrafterFactory = Callable[[Sequence[Sequence[int]]], Drafter]


def _root(backend: Backend) -> str:
    root = getattr(backend, "root", None)
    if not isinstance(root, str):
        raise ValueError(f"backend '{backend.name}' has no server URL")
    return root


def _triton(backend: Backend) -> bool:
    options = getattr(backend, "options", None)
    return backend.plugin == "tensorrt_llm" and getattr(options, "mode", "trtllm_serve") == "triton"


def build_target(backend: Backend, session: aiohttp.ClientSession, eos_ids: Sequence[int] = (),
                 prompt_logprobs_below: int = 0) -> Target:
    """The `Target` client for a started backend; `eos_ids` from the config where the server never names
    them; `prompt_logprobs_below` for a vLLM target (V-A on short sequences)."""
    root, timeout_s = _root(backend), backend.config.timeouts.total_s
    end_id = eos_ids[0] if eos_ids else None
    target: Target
    if backend.plugin == "llamacpp":
        from gateway.speculative.llamacpp_target import LlamaCppSlotTarget

        target = LlamaCppSlotTarget(root, session=session, timeout_s=timeout_s)
    elif _triton(backend):
        from gateway.speculative.triton_target import TritonDraftTarget

        target = TritonDraftTarget(root, session=session, timeout_s=timeout_s, end_id=end_id)
    elif backend.plugin == "tensorrt_llm":
        from gateway.speculative.trtllm_serve_target import TrtllmServeTokenTarget

        # trtllm-serve: batched-prefix verification as vLLM, ids through `detokenize: false`.
        target = TrtllmServeTokenTarget(root, backend.config.model, session=session, timeout_s=timeout_s,
                                        eos_id=end_id)
    else:
        from gateway.speculative.vllm_target import VllmTokenTarget

        target = VllmTokenTarget(root, backend.config.model, session=session, timeout_s=timeout_s,
                                 prompt_logprobs_below=prompt_logprobs_below if backend.plugin == "vllm" else 0)
    target.eos_ids.update(eos_ids)
    return target


def codec_of(backend: Backend | None, session: aiohttp.ClientSession) -> ChatCodec | None:
    """The tokenizer of a llama.cpp or vLLM backend's server (None for other plugins)."""
    if backend is None:
        return None
    if backend.plugin == "llamacpp":
        return LlamaCppCodec(_root(backend), session)
    if backend.plugin == "vllm":
        return VllmCodec(_root(backend), backend.config.model, session)
    return None


def build_codec(target: Backend, draft: Backend | None, session: aiohttp.ClientSession) -> ChatCodec:
    """The tokenizer the pair renders chats and detokenizes with: the target's, else the draft's."""
    codec = codec_of(target, session) or codec_of(draft, session)
    if codec is None:
        raise ValueError(f"no tokenizer for target '{target.name}': pair it with a llamacpp or vllm draft backend")
    return codec


def build_drafter_factory(draft: str, backend: Backend | None, codec: ChatCodec,
                          session: aiohttp.ClientSession) -> DrafterFactory:
    """Makes one request's drafter, given the context sequences (recent responses) to draft from."""
    if draft == NGRAM or backend is None:
        return lambda context: NgramDrafter(context)
    root, timeout_s = _root(backend), backend.config.timeouts.total_s
    if backend.plugin == "llamacpp":
        from gateway.speculative.llamacpp_draft import LlamaCppDrafter

        shared = LlamaCppDrafter(root, session=session, timeout_s=timeout_s)
        return lambda context: shared
    if backend.plugin == "vllm":
        from gateway.speculative.vllm_draft import VllmDrafter

        vllm = VllmDrafter(root, backend.config.model, session=session, timeout_s=timeout_s)
        return lambda context: vllm
    if backend.plugin == "ollama":
        from gateway.speculative.ollama_draft import OllamaDrafter

        # Per request: it keeps the request's detokenized text between rounds.
        return lambda context: OllamaDrafter(root, backend.config.model, codec, session=session, timeout_s=timeout_s)
    raise ValueError(f"a '{backend.plugin}' backend cannot draft")
