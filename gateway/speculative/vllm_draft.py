"""A vLLM (or trtllm-serve) server running a small model as a speculative-decoding `Drafter`, over its
OpenAI completions route with token-id prompts (../shared/reference/speculative-decoding.md §5.1).

The draft model must share the target's tokenizer (same vocabulary, same ids): the committed target
ids go in as the prompt and the draft comes back as ids through `return_tokens_as_token_ids`, so no
text is ever re-tokenized and a draft is exactly what the small model would emit greedily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp

from gateway.speculative.interfaces import DraftFailed, TargetFailed
from gateway.speculative.pooled_http import SessionClient, post_json
from gateway.speculative.vllm_target import _choice_tokens, _error_detail


class VllmDrafter(SessionClient):
    """`Drafter` over a vLLM-compatible /v1/completions with token-id prompts: k greedy tokens per call.

    `base_url` is the server's root (…/v1 is appended); `session` may be shared between requests (it
    is then not closed by `aclose`), else one is made on first use. Every failure (transport, timeout,
    HTTP status, a body that does not parse or carries no token ids) raises `DraftFailed` with the
    reason, which makes the decoder fall back to plain target decoding.
    """

    name = "vllm"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.url = base_url.rstrip("/") + "/v1/completions"
        self.model = model
        super().__init__(session, timeout_s)

    async def draft(self, committed: Sequence[int], k: int) -> list[int]:
        """The draft model's greedy continuation of `committed`: at most `k` ids (fewer after its EOS)."""
        if k <= 0:
            return []
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": list(committed),
            "max_tokens": k,
            "temperature": 0,
            "logprobs": 1,
            "return_tokens_as_token_ids": True,
            "stream": False,
        }
        # A shared session may carry another timeout: pass ours per call so a stuck drafter costs at most
        # timeout_s before the request goes on without it.
        decoded = await post_json(self._client(), self.url, body, failure=DraftFailed, what="draft call",
                                  detail=_error_detail, limits=self.timeout)
        choices = decoded.get("choices") if isinstance(decoded, dict) else None
        if not isinstance(choices, list) or not choices:
            raise DraftFailed("draft answer has no choices")
        try:
            tokens = _choice_tokens(choices[0])
        except TargetFailed as err:  # the helper is the target's; a drafter only ever raises DraftFailed
            raise DraftFailed(f"draft answer: {err}") from err
        if not tokens and choices[0].get("text"):
            # Text but no logprobs: the server ignored logprobs/return_tokens_as_token_ids, and the
            # text cannot be turned back into ids without re-tokenizing it.
            raise DraftFailed("draft answer carries text but no token ids (logprobs unsupported?)")
        return tokens[:k]
