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

from typing import Any

import aiohttp
import msgspec

from gateway.speculative.interfaces import TargetFailed
from gateway.speculative.vllm_target import VllmTokenTarget

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


class TrtllmServeTokenTarget(VllmTokenTarget):
    """`Target` over trtllm-serve's /v1/completions with token-id prompts (V-B verification): vLLM's
    protocol with trtllm-serve's way of returning ids (`detokenize: false` -> `token_ids`).

    `eos_id` is the model's end token (its tokenizer's eos_token_id): trtllm-serve stops on it without
    returning it, so it is what the target reports at such a position; unknown (None), such a position
    stays unknown and the round ends there. `base_url` is the server's root; `session` may be shared.
    Every failure raises `TargetFailed` with the reason.
    """

    name = "trtllm-serve"
    describe_error = staticmethod(_error_detail)

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 60.0,
        eos_id: int | None = None,
    ) -> None:
        super().__init__(base_url, model, session=session, timeout_s=timeout_s)
        self.eos_id = eos_id
        if eos_id is not None:
            self.eos_ids.add(eos_id)

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

    def _read_choice(self, choice: Any) -> list[int]:
        """The choice's ids, then the end token where the server stopped on it (it never sends that id)."""
        tokens, ended = _choice(choice)
        if ended and self.eos_id is not None:
            return [*tokens, self.eos_id]
        return tokens
