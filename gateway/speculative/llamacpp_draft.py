"""A llama.cpp server (llama-server) as a speculative-decoding `Drafter`: greedy /completion with a token-id
prompt (../shared/reference/speculative-decoding.md §5.1, "Draft: llama.cpp").

The committed ids go to the draft verbatim: the pair must share a tokenizer (gateway.speculative.probe
checks that at start-up), and nothing is re-tokenized. A fixed `id_slot` keeps the draft's KV cache
on the request's sequence, so each round evaluates only the tokens committed since the last one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp

from gateway.speculative.interfaces import DraftFailed
from gateway.speculative.llamacpp_target import GREEDY_SAMPLING, LlamaCppWireError, post_completion
from gateway.speculative.pooled_http import SessionClient


class LlamaCppDrafter(SessionClient):
    """`Drafter` over llama-server's /completion: `draft(committed, k)` is the draft model's greedy
    continuation of `committed`, k tokens or fewer.

    A draft that ends on an end-of-generation token keeps it (the server includes the id it stopped
    on in `tokens`): when the target agrees, the round commits the EOS and the request ends without
    another target call; when it does not, the round costs what any wrong draft costs. Nothing can
    follow it (the draft model stopped there).

    `id_slot` pins the draft to one slot (None: the server picks by prompt similarity). When draft
    and target share a server, give the drafter a slot outside the target's range. `session` may be
    shared (not closed by `aclose`). Every failure (transport, timeout, HTTP status, a body without
    `tokens`) raises `DraftFailed`, which makes the decoder fall back to plain target decoding.
    """

    name = "llama.cpp"

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30.0,
        id_slot: int | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/completion"
        super().__init__(session, timeout_s)
        self.id_slot = id_slot


    async def draft(self, committed: Sequence[int], k: int) -> list[int]:
        """Up to `k` greedy draft-model ids after `committed` ([] for k <= 0 or an empty `committed`)."""
        if k <= 0 or not committed:
            return []  # llama.cpp refuses an empty prompt, and there is nothing to ask for k <= 0
        body: dict[str, Any] = {
            "prompt": list(committed),
            "n_predict": k,
            "return_tokens": True,
            "cache_prompt": True,
            "stream": False,
            **GREEDY_SAMPLING,
        }
        if self.id_slot is not None:
            body["id_slot"] = self.id_slot
        try:
            answer = await post_completion(self._client(), self.url, body, "draft call")
        except LlamaCppWireError as err:
            raise DraftFailed(str(err)) from err
        return answer.tokens[:k]
