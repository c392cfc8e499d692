"""The start-up probe of a route's draft/target pair (reference §5.1), as one verdict with reasons.

1. The target's tokenizer renders a probe chat into ids (what every request will do first).
2. The target takes those ids as a prompt: a plain greedy step, then a verify call of the token it
   chose, which must pick the same token (token-id prompts work, and the verify path agrees with
   plain decoding). A BOS written twice at the head of the rendered prompt is refused (§2.0.2).
3. A model draft backend with a tokenizer (llama.cpp, vLLM) must give the target's ids on the probe
   texts (unicode, whitespace, code, special tokens) and add the same BOS/EOS (`probe_pair`). Text
   drafters (Ollama) are re-tokenized with the target's tokenizer, so they need no parity.

Nothing raises: each failed check is a reason, and the pair then runs plain decoding.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from gateway.backend import Backend
from gateway.speculative.backends import codec_of
from gateway.speculative.codec import ChatCodec
from gateway.speculative.interfaces import Target, TargetFailed
from gateway.speculative.probe import TokenizerError, probe_pair

PROBE_MESSAGES = [{"role": "user", "content": "Count from one to five: one, two,"}]
# Words in a failure that mean the server was not there (yet), not that it cannot do the job.
_UNREACHABLE = ("ClientConnectorError", "ServerDisconnectedError", "TimeoutError", "ConnectError",
                "Cannot connect", "Connection refused", "answered 503")


@dataclass
class PairProbeResult:
    """The verdict: `ok`, the `reasons` it is not, what was measured, and whether to try again later."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    unreachable: bool = False

    @property
    def summary(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.details.items() if k != "parity_reasons")


async def probe_pair_capabilities(target: Target, codec: ChatCodec, draft: Backend | None,
                                  session: aiohttp.ClientSession) -> PairProbeResult:
    """Probe the pair (see the module doc); `draft` is None for the n-gram drafter."""
    started = time.perf_counter()
    result = PairProbeResult(ok=True)

    def fail(reason: str) -> None:
        result.ok = False
        result.reasons.append(reason)
        if any(word in reason for word in _UNREACHABLE):
            result.unreachable = True

    try:
        prompt = await codec.render_chat(PROBE_MESSAGES)
    except TokenizerError as err:
        fail(f"rendering the chat with the target's tokenizer failed: {err}")
        return result
    result.details["prompt_tokens"] = len(prompt)
    if len(prompt) >= 2 and prompt[0] == prompt[1] and prompt[0] in await _bos_ids(codec):
        fail(f"the rendered prompt starts with BOS twice ({prompt[:2]}): the template and the tokenizer both add it")
    try:
        async with aclosing(target.generate(prompt, 1)) as stream:  # type: ignore[type-var]
            plain = [token async for token in stream]
        if not plain:
            fail("the target generated nothing from a token-id prompt")
        else:
            verification = await target.verify(prompt, plain[:1])
            result.details["token_id_prompts"] = True
            if not verification.argmax or verification.argmax[0] != plain[0]:
                fail(f"the target's verify call disagrees with its own greedy step: plain chose {plain[0]}, "
                     f"verify {verification.argmax[:1]}")
    except TargetFailed as err:
        fail(f"the target does not decode from token-id prompts: {err}")
    if draft is not None:
        draft_codec = codec_of(draft, session)
        if draft_codec is not None:
            parity = await probe_pair(draft_codec, codec)
            result.details["tokenizer_parity"] = parity.ok
            for reason in parity.reasons:
                fail(f"draft/target tokenizers: {reason}")
        else:
            result.details["tokenizer_parity"] = "not needed (text drafts are re-tokenized by the target)"
    result.details["probe_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


async def _bos_ids(codec: ChatCodec) -> set[int]:
    """The ids the tokenizer puts before a text when asked for special tokens (its BOS), if any."""
    try:
        with_special = await codec.tokenize("a", add_special=True)
        plain = await codec.tokenize("a", add_special=False)
    except TokenizerError:
        return set()
    return set(with_special[: max(len(with_special) - len(plain), 0)])
