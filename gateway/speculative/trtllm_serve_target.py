"""trtllm-serve as a speculative-decoding `Target`: V-B batched-prefix verification over its OpenAI
/v1/completions with token-id prompts (../shared/reference/speculative-decoding.md §2.2, §5.1).

`VllmTokenTarget` does not work against trtllm-serve as it is: it asks for ids with vLLM's
`return_tokens_as_token_ids`, a field trtllm-serve's `CompletionRequest` does not declare, and its
models forbid extra fields (`extra="forbid"`), so every call is a 400. What trtllm-serve offers instead
(NVIDIA/TensorRT-LLM tensorrt_llm/serve/openai_protocol.py, postprocess_handlers.py, openai_server.py):
- `prompt: Union[List[int], List[List[int]], str, List[str]]`: one request per prompt, answers merged
  in prompt order with `index = prompt_idx * n + output.index`;
- `detokenize: false`: each choice (and each stream chunk's choice) carries `token_ids`, with `text` "";
  logprobs name tokens by decoded text only, so they cannot carry ids;
- the end token stops generation but is left out of `token_ids` (NVIDIA/TensorRT-LLM issue #2190):
  `finish_reason` "stop" with `stop_reason` null ("None if ... encountering the EOS token"). The id is
  the tokenizer's EOS, which no response names, so the caller passes it as `eos_id`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import msgspec

from gateway.speculative.interfaces import TargetFailed, Verification
from gateway.speculative.verify import vllm_batched_prefix_argmax

# Probe-able capability: how this target reads ids (a field trtllm-serve declares, not vLLM's extra).
TOKEN_ID_FIELD = "detokenize"


def _error_detail(body: bytes) -> str:
    """trtllm-serve's ErrorResponse `message`, its validation `{"error": ...}`, or the body's start."""
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        decoded = None
    if isinstance(decoded, dict):
        message = decoded.get("message") or decoded.get("error")
        if message:
            return str(message)
    return body[:200].decode("utf-8", "replace")


def _choice(choice: Any) -> tuple[list[int], bool]:
    """(token ids, whether it stopped on the end token) of one choice or stream-chunk choice."""
    if not isinstance(choice, dict):
        raise TargetFailed("a choice is not an object")
    ids = choice.get("token_ids")
    if ids is None:
        ids = []
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise TargetFailed(f"choice token_ids are not ids: {str(ids)[:100]}")
    # finish "stop" with no stop string or stop token named: the end token (we send neither stop nor stop_token_ids).
    ended = choice.get("finish_reason") == "stop" and choice.get("stop_reason") is None
    return ids, ended


class TrtllmServeTokenTarget:
    """`Target` over trtllm-serve's /v1/completions with token-id prompts (V-B verification).

    `eos_id` is the model's end token (its tokenizer's eos_token_id): trtllm-serve stops on it without
    returning it, so it is what the target reports at such a position; unknown (None), such a position
    stays unknown and the round ends there. `base_url` is the server's root; `session` may be shared.
    Every failure raises `TargetFailed` with the reason.
    """

    name = "trtllm-serve"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 60.0,
        eos_id: int | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/v1/completions"
        self.model = model
        self.eos_id = eos_id
        self.eos_ids: set[int] = set() if eos_id is None else {eos_id}
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._own_session = session is None
        self._session = session

    def _client(self) -> aiohttp.ClientSession:
        # Made lazily: a ClientSession must be created inside the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    def _body(self, prompt: list[int] | list[list[int]], max_tokens: int, *, stream: bool) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            # Ids in choices[].token_ids; the prompt ids already carry their BOS (§2.0.2).
            "detokenize": False,
            "add_special_tokens": False,
            "stream": stream,
        }

    def _ended(self) -> int | None:
        """The id to report where the server stopped on its end token (None: unknown)."""
        if self.eos_id is not None:
            self.eos_ids.add(self.eos_id)
        return self.eos_id

    async def verify(self, committed: Sequence[int], draft: Sequence[int]) -> Verification:
        """One batched call over the prefixes committed + draft[:j], j = 0..len(draft)."""
        base = list(committed)
        prompts = [base + list(draft[:j]) for j in range(len(draft) + 1)]
        try:
            async with self._client().post(self.url, json=self._body(prompts, 1, stream=False)) as response:
                content = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as err:
            raise TargetFailed(f"verify call failed: {type(err).__name__}: {err}") from err
        if status != 200:
            raise TargetFailed(f"verify call answered {status}: {_error_detail(content)}")
        try:
            body = msgspec.json.decode(content)
        except msgspec.DecodeError as err:
            raise TargetFailed(f"verify answer is not JSON: {err}") from err
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list):
            raise TargetFailed("verify answer has no choices")
        by_index: dict[int, tuple[list[int], bool]] = {}
        for choice in choices:
            index = choice.get("index") if isinstance(choice, dict) else None
            if not isinstance(index, int):
                raise TargetFailed("a verify choice has no index")
            by_index[index] = _choice(choice)
        picks: list[int] = []
        for j in range(len(prompts)):
            tokens, ended = by_index.get(j, ([], False))
            pick = tokens[0] if tokens else (self._ended() if ended else None)
            if pick is None:
                break  # unknown from here on: accept_round stops there
            picks.append(pick)
        return vllm_batched_prefix_argmax(picks)

    async def generate(self, committed: Sequence[int], max_tokens: int) -> AsyncIterator[int]:
        """Plain greedy decoding, yielding each id as its SSE chunk arrives (and the end token last when
        the server stopped on it)."""
        body = self._body(list(committed), max_tokens, stream=True)
        ended = False
        try:
            async with self._client().post(self.url, json=body) as response:
                if response.status != 200:
                    raise TargetFailed(
                        f"generate call answered {response.status}: {_error_detail(await response.read())}")
                async for raw in response.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        eos = self._ended() if ended else None
                        if eos is not None:
                            yield eos
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
                        tokens, stop = _choice(choice)
                        ended = ended or stop
                        for token in tokens:
                            yield token
        except (TimeoutError, aiohttp.ClientError) as err:
            raise TargetFailed(f"generate call failed: {type(err).__name__}: {err}") from err
        # trtllm-serve ends every stream with [DONE]: without it, the stream was cut.
        raise TargetFailed("generate stream ended without [DONE]")

    async def aclose(self) -> None:
        """Close the HTTP session if this target created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
