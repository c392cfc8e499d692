"""A vLLM (or trtllm-serve) server as a speculative-decoding `Target`, over its OpenAI completions
route with token-id prompts (../shared/reference/speculative-decoding.md §2.2, V-B).

`verify` sends the k+1 prefixes committed + draft[:j] as one batch with max_tokens=1: each choice is
the target's own greedy pick after that prefix, the same sampler target-alone decoding runs, so the
round is exact without reading any score table, and vLLM's prefix cache stays on. `generate` is a
plain streamed completion. Token ids come back through `return_tokens_as_token_ids`: the logprobs'
`tokens` are "token_id:<id>" strings, so no text is ever re-tokenized.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import msgspec

from gateway.speculative.interfaces import TargetFailed, Verification
from gateway.speculative.pooled_http import SessionClient, post_json
from gateway.speculative.verify import PromptLogprobsEntry, vllm_batched_prefix_argmax, vllm_prompt_logprobs_argmax

_TOKEN_PREFIX = "token_id:"


def token_id(name: object) -> int:
    """The id in a "token_id:<id>" logprobs token (raises `TargetFailed` for anything else)."""
    if not isinstance(name, str) or not name.startswith(_TOKEN_PREFIX):
        raise TargetFailed(f"expected a 'token_id:<id>' token, got {name!r}")
    try:
        return int(name[len(_TOKEN_PREFIX) :])
    except ValueError:
        raise TargetFailed(f"expected a 'token_id:<id>' token, got {name!r}") from None


def _choice_tokens(choice: Any) -> list[int]:
    """The token ids of one completion choice (or stream chunk choice), from its logprobs."""
    if not isinstance(choice, dict):
        raise TargetFailed("a choice is not an object")
    logprobs = choice.get("logprobs")
    if logprobs is None:
        return []
    tokens = logprobs.get("tokens") if isinstance(logprobs, dict) else None
    if not isinstance(tokens, list):
        raise TargetFailed("choice logprobs carry no token list")
    return [token_id(name) for name in tokens]


def _error_detail(body: bytes) -> str:
    try:
        decoded = msgspec.json.decode(body)
        message = decoded.get("error", {}).get("message") if isinstance(decoded, dict) else None
    except (msgspec.DecodeError, AttributeError):
        message = None
    return str(message) if message else body[:200].decode("utf-8", "replace")


class VllmTokenTarget(SessionClient):
    """`Target` over a vLLM-compatible /v1/completions with token-id prompts (V-B verification).

    `base_url` is the server's root (…/v1 is appended); `session` may be shared between requests (it
    is then not closed by `aclose`), else one is made on first use. Every failure (transport, HTTP
    status, a body that does not parse, an in-stream error event) raises `TargetFailed` with the reason.
    aiohttp rather than httpx: a round is one short call, and aiohttp's per-call overhead is about
    half httpx's (~1.5 ms vs ~3 ms measured against the emulator), paid on every round.
    """

    name = "vllm"
    # The message of the server's error body (trtllm-serve words it differently).
    describe_error = staticmethod(_error_detail)

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 60.0,
        logprobs: int = 1,
        prompt_logprobs_below: int = 0,
    ) -> None:
        self.url = base_url.rstrip("/") + "/v1/completions"
        self.model = model
        self.logprobs = logprobs
        # V-A (§2.1) for sequences shorter than this: one prompt with prompt_logprobs instead of a batch of
        # prefixes. vLLM recomputes the whole prompt for such a request (no prefix cache), so only short
        # contexts gain; 0 keeps V-B always.
        self.prompt_logprobs_below = prompt_logprobs_below
        super().__init__(session, timeout_s)
        # With no stop strings sent, finish_reason "stop" can only mean the last token ended the
        # sequence (EOS or another end-of-turn id): learned from the answers, see `_learn_end`.
        self.eos_ids: set[int] = set()


    def _body(self, prompt: list[int] | list[list[int]], max_tokens: int, *, stream: bool) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "logprobs": self.logprobs,
            "return_tokens_as_token_ids": True,
            "stream": stream,
        }

    async def _post_verify(self, body: dict[str, Any]) -> list[Any]:
        """POST one verify call; the answer's choices (raises `TargetFailed`)."""
        decoded = await post_json(self._client(), self.url, body, failure=TargetFailed, what="verify call",
                                  detail=self.describe_error)
        choices = decoded.get("choices") if isinstance(decoded, dict) else None
        if not isinstance(choices, list):
            raise TargetFailed("verify answer has no choices")
        return choices

    async def verify(self, committed: Sequence[int], draft: Sequence[int]) -> Verification:
        """One call: V-B, the prefixes committed + draft[:j] (j = 0..len(draft)) as a batch; or V-A for a
        short sequence (`prompt_logprobs_below`)."""
        if draft and len(committed) + len(draft) < self.prompt_logprobs_below:
            return await self._verify_prompt_logprobs(committed, draft)
        base = list(committed)
        prompts = [base + list(draft[:j]) for j in range(len(draft) + 1)]
        choices = await self._post_verify(self._body(prompts, 1, stream=False))
        # vLLM numbers the choices by prompt (index = prompt position when n=1); order by it rather
        # than trusting the list order.
        by_index: dict[int, list[int]] = {}
        for choice in choices:
            index = choice.get("index") if isinstance(choice, dict) else None
            if not isinstance(index, int):
                raise TargetFailed("a verify choice has no index")
            by_index[index] = self._read_choice(choice)
        picks: list[int] = []
        for j in range(len(prompts)):
            tokens = by_index.get(j)
            if not tokens:
                break  # unknown from here on (the server stopped early): accept_round stops there
            picks.append(tokens[0])
        return vllm_batched_prefix_argmax(picks)

    async def generate(self, committed: Sequence[int], max_tokens: int) -> AsyncIterator[int]:
        """Plain greedy decoding, yielding each id as its SSE chunk arrives."""
        body = self._body(list(committed), max_tokens, stream=True)
        try:
            async with self._client().post(self.url, json=body) as response:
                if response.status != 200:
                    raise TargetFailed(
                        f"generate call answered {response.status}: {self.describe_error(await response.read())}"
                    )
                async for raw in response.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunk = msgspec.json.decode(data)
                    except msgspec.DecodeError as err:
                        raise TargetFailed(f"malformed stream chunk: {err}") from err
                    if not isinstance(chunk, dict):
                        raise TargetFailed("a stream chunk is not an object")
                    if "error" in chunk:
                        raise TargetFailed(f"target stream failed: {chunk['error']}")
                    for choice in chunk.get("choices") or ():
                        for token in self._read_choice(choice):
                            yield token
        except (TimeoutError, aiohttp.ClientError) as err:
            raise TargetFailed(f"generate call failed: {type(err).__name__}: {err}") from err
        # A stream that ends without [DONE] was cut: what came is real, but the end is not.
        raise TargetFailed("generate stream ended without [DONE]")

    async def _verify_prompt_logprobs(self, committed: Sequence[int], draft: Sequence[int]) -> Verification:
        """V-A (§2.1): committed + draft as one prompt with `prompt_logprobs=2` (two entries per position,
        so a tie with the top one shows), max_tokens 1 (the bonus)."""
        body = self._body([*committed, *draft], 1, stream=False)
        body["prompt_logprobs"] = 2
        choices = await self._post_verify(body)
        if len(choices) != 1 or not isinstance(choices[0], dict):
            raise TargetFailed(f"a prompt_logprobs verify answered {len(choices)} choices")
        choice = choices[0]
        raw = choice.get("prompt_logprobs")
        if not isinstance(raw, list):
            raise TargetFailed("the verify answer has no prompt_logprobs")
        tokens = _choice_tokens(choice)
        self._learn_end(choice, tokens)
        entries = [_prompt_logprobs_entry(position) for position in raw]
        return vllm_prompt_logprobs_argmax(entries, len(committed), draft, tokens[0] if tokens else None)

    def _read_choice(self, choice: Any) -> list[int]:
        """The ids of one answer choice (or stream chunk choice), learning an end token on the way."""
        tokens = _choice_tokens(choice)
        self._learn_end(choice, tokens)
        return tokens

    def _learn_end(self, choice: dict[str, Any], tokens: list[int]) -> None:
        if tokens and choice.get("finish_reason") == "stop" and not isinstance(choice.get("stop_reason"), str):
            self.eos_ids.add(tokens[-1])



def _prompt_logprobs_entry(position: Any) -> PromptLogprobsEntry | None:
    """One position of vLLM's `prompt_logprobs`: {token id: {"logprob", "rank", ...}} (keys are ids as JSON
    strings, or "token_id:<id>"), as {id: (logprob, rank)}; None stays None (the first position)."""
    if position is None:
        return None
    if not isinstance(position, dict):
        raise TargetFailed("a prompt_logprobs position is not an object")
    entry: PromptLogprobsEntry = {}
    for key, value in position.items():
        name = str(key)
        token = token_id(name) if name.startswith(_TOKEN_PREFIX) else _int_key(name)
        if not isinstance(value, dict) or not isinstance(value.get("logprob"), int | float):
            raise TargetFailed("a prompt_logprobs entry has no logprob")
        rank = value.get("rank")
        entry[token] = (float(value["logprob"]), rank if isinstance(rank, int) else 0)
    return entry


def _int_key(name: str) -> int:
    try:
        return int(name)
    except ValueError:
        raise TargetFailed(f"a prompt_logprobs key is not a token id: {name!r}") from None
