"""An Ollama server as a speculative-decoding `Drafter` (draft only: ../shared/reference/speculative-decoding.md
§2.5, §5.1).

Ollama takes no token-id prompts and returns no token ids, so a round goes through text: the committed
target ids are rendered by the *target's* detokenizer, Ollama continues that text with `/api/generate`
(`raw: true`, so no chat template wraps it; `options.num_predict = k`, `temperature = 0` for its greedy
pick), and the reply is re-tokenized by the target's tokenizer. Mis-segmented drafts only lower the
acceptance rate: the target verifies every drafted id, so exactness never depends on this path.

Token boundaries. The reply continues the committed text, and its first characters may belong to the
token the target would form across the boundary (BPE merges; SentencePiece's dummy-prefix space that a
bare `tokenize(reply)` adds). So the reply is tokenized behind the committed tail's text:
`tokenize(text(tail) + reply)`, and when that starts with exactly the tail's ids, what follows them is
the draft, segmented as the target would segment the whole text. When it does not (the reply's start
merges into the tail's last token, or the tail's text does not re-tokenize to itself), the draft is
`tokenize(reply)`, whose first id is then probably rejected: a lost round, never a wrong token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import msgspec

from gateway.speculative.interfaces import DraftFailed, TokenCodec
from gateway.speculative.pooled_http import SessionClient, post_json
from gateway.speculative.probe import TokenizerError

# Enough context for the tail to re-tokenize as the committed ids did (a word split over a few tokens,
# a multi-byte character over byte tokens), short enough that its detokenize call is cheap.
TAIL_TOKENS = 8


def _error_detail(body: bytes) -> str:
    """Ollama's `{"error": "..."}` message (server/routes.go), else the start of the body."""
    try:
        decoded = msgspec.json.decode(body)
        message = decoded.get("error") if isinstance(decoded, dict) else None
    except msgspec.DecodeError:
        message = None
    return str(message) if message else body[:200].decode("utf-8", "replace")


class OllamaDrafter(SessionClient):
    """`Drafter` over Ollama's `/api/generate` in raw mode, through the target's tokenizer `codec`.

    `base_url` is the server's root; `session` may be shared between requests (it is then not closed by
    `aclose`), else one is made on first use. `options` adds Ollama options to every call (say
    `num_ctx`, which must match the loaded model's or Ollama reloads it); `num_predict` and
    `temperature` are always the drafter's own. Every failure (Ollama's transport, status or body, or
    the codec's `TokenizerError`) raises `DraftFailed` with the reason. Greedy mode only: Ollama cannot
    give the draft's probabilities in target-id space.
    """

    name = "ollama"

    def __init__(
        self,
        base_url: str,
        model: str,
        codec: TokenCodec,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30.0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/api/generate"
        self.model = model
        self.codec = codec
        self.options = dict(options or {})
        super().__init__(session, timeout_s)
        # How the last drafts were segmented, for tests and metrics: "boundary" (behind the tail) or
        # "bare" (the reply alone).
        self.boundary_drafts = 0
        self.bare_drafts = 0


    async def draft(self, committed: Sequence[int], k: int) -> list[int]:
        """Ollama's greedy continuation of the committed text, as at most `k` target ids."""
        if k <= 0:
            return []
        tail = list(committed[-TAIL_TOKENS:])
        try:
            # The whole text, not a window: Ollama drafts from what it sees, and a real prompt's start
            # (instructions, the document being copied) is what makes its guesses good.
            text, tail_text = await asyncio.gather(self.codec.detokenize(committed), self.codec.detokenize(tail))
        except TokenizerError as err:
            raise DraftFailed(f"detokenizing the committed ids failed: {err}") from err
        reply = await self._generate(text, k)
        if not reply:
            return []
        try:
            ids = await self.codec.tokenize(tail_text + reply) if tail else []
            if tail and ids[: len(tail)] == tail and len(ids) > len(tail):
                self.boundary_drafts += 1
                return ids[len(tail) : len(tail) + k]
            self.bare_drafts += 1
            return (await self.codec.tokenize(reply))[:k]
        except TokenizerError as err:
            raise DraftFailed(f"tokenizing the draft text failed: {err}") from err

    async def _generate(self, prompt: str, k: int) -> str:
        """The text Ollama generates after `prompt` (at most k of its own tokens), or `DraftFailed`."""
        body = {
            "model": self.model,
            "prompt": prompt,
            "raw": True,
            "stream": False,
            "options": {**self.options, "num_predict": k, "temperature": 0},
        }
        # A shared session may carry another timeout: pass ours per call.
        decoded = await post_json(self._client(), self.url, body, failure=DraftFailed, what="draft call",
                                  detail=_error_detail, limits=self.timeout)
        if not isinstance(decoded, dict):
            raise DraftFailed("draft answer is not an object")
        if "error" in decoded:
            raise DraftFailed(f"draft call failed: {decoded['error']}")
        reply = decoded.get("response")
        if not isinstance(reply, str):
            raise DraftFailed("draft answer has no response text")
        return reply
