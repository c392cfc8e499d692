"""trtllm-serve's /v1/completions for token-id prompts, emulated with the input-grounded token model of
plugins/vllm/emulator/token_model.py (imported) and GPU-like costs. Source tags are those of serve_wire.py.

What the real server does with them ([srv] openai_completion, [post] completion_*_post_processor):
- `prompt` may be one list of ids or a list of such lists; each prompt becomes its own request, and a
  batch's answers are merged in prompt order, each choice's `index` = prompt_idx * n + output index,
  with `model` the server's own name and `prompt_token_ids` a (here empty) list of lists;
- there is no `return_tokens_as_token_ids`: ids come back in `choices[i].token_ids` when the request
  sets `detokenize: false` (`text` is then ""); with the default `detokenize: true`, `token_ids` is null
  and logprobs name tokens by their decoded text;
- the end token stops generation but is not part of the output (NVIDIA/TensorRT-LLM issue #2190):
  finish_reason "stop" with stop_reason null.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from aiohttp import web

from plugins.emulation import EmulatorRuntime, QueueFull
from plugins.emulation.openai_wire import json_response
from plugins.tensorrt_llm.emulator.common import fault_before_answer
from plugins.tensorrt_llm.emulator.serve_wire import error_response, new_id, usage
from plugins.vllm.emulator.token_model import TokenKnobs, TokenSequence


def token_prompts(raw: Any) -> list[list[int]] | None:
    """[proto] `prompt: List[int] | List[List[int]]` as a batch of id lists; None for text prompts."""
    def ids(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in value)

    if ids(raw):
        return [list(raw)]
    if isinstance(raw, list) and raw and all(ids(p) for p in raw):
        return [list(p) for p in raw]
    return None


def _text(tokens: list[int]) -> str:
    return "".join(f" t{t}" for t in tokens)


class ServeTokenCompletions:
    """Completions over token-id prompts: one request per prompt, greedy, with `rtt_ms` per call and per
    step `decode_ms` plus `verify_token_ms` for each further prompt of the batch (they share the step)."""

    def __init__(self, runtime: EmulatorRuntime, model: str, max_seq_len: int, knobs: TokenKnobs) -> None:
        self.runtime = runtime
        self.model = model
        self.max_seq_len = max_seq_len
        self.knobs = knobs

    def update(self, changes: dict[str, Any]) -> TokenKnobs:
        """Apply a partial update of the token knobs (validated as a whole)."""
        self.knobs = msgspec.convert({**msgspec.structs.asdict(self.knobs), **changes}, TokenKnobs)
        return self.knobs

    def _generate(self, prompt: list[int], max_tokens: int) -> tuple[list[int], bool]:
        """(generated ids, whether it stopped on the end token, which is left out of them)."""
        sequence = TokenSequence(prompt, self.knobs)
        out: list[int] = []
        while len(out) < max_tokens:
            token = sequence.next_token()
            if token == self.knobs.eos_token_id:
                return out, True
            out.append(token)
            sequence.extend((token,))
        return out, False

    async def serve(self, request: web.Request, body: dict[str, Any], prompts: list[list[int]]) -> web.StreamResponse:
        started = asyncio.get_running_loop().time()
        requested = body.get("max_tokens")
        for prompt in prompts:
            if len(prompt) + (requested or 0) > self.max_seq_len:
                return error_response(400, f"The sum of prompt length ({len(prompt)}) and query length (0) max_tokens "
                                           f"({requested}) should not exceed max_seq_len ({self.max_seq_len})")
        stream = bool(body.get("stream"))
        if stream and len(prompts) > 1:
            return error_response(400, "emulator: streaming a batch of token-id prompts is not emulated")
        failed = await fault_before_answer(request, self.runtime, error_response)
        if failed is not None:
            return failed
        try:
            async with self.runtime.slot():
                if stream:
                    return await self._stream(request, body, prompts[0], started)
                return await self._whole(body, prompts, started)
        except QueueFull:
            return error_response(503, "emulated fault: request queue is full")

    def _max_tokens(self, body: dict[str, Any], prompt: list[int]) -> int:
        requested = body.get("max_tokens")
        return requested if isinstance(requested, int) else self.max_seq_len - len(prompt)

    async def _whole(self, body: dict[str, Any], prompts: list[list[int]], started: float) -> web.Response:
        knobs = self.knobs
        detokenize = body.get("detokenize", True) is not False
        choices, prompt_total, completion_total, steps = [], 0, 0, 0
        for index, prompt in enumerate(prompts):
            tokens, ended = self._generate(prompt, self._max_tokens(body, prompt))
            steps = max(steps, len(tokens) + (1 if ended else 0))
            prompt_total += len(prompt)
            completion_total += len(tokens)
            choices.append({
                "index": index, "text": _text(tokens) if detokenize else "",
                "token_ids": None if detokenize else tokens, "logprobs": self._logprobs(body, tokens),
                "context_logits": None, "finish_reason": "stop" if ended else "length", "stop_reason": None,
                "disaggregated_params": None, "avg_decoded_tokens_per_iter": 1.0,
            })
        per_step = knobs.decode_ms + (len(prompts) - 1) * knobs.verify_token_ms
        delay = started + (knobs.rtt_ms + steps * per_step) / 1000 - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        # [srv] merge_completion_responses: a batch answers with the server's model name and a list of
        # prompt_token_ids (filled only for context-only requests); a single prompt keeps its own answer.
        batch = len(prompts) > 1
        return json_response({
            "id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
            "model": self.model if batch else str(body.get("model")), "choices": choices,
            "usage": usage(prompt_total, completion_total, details=True),
            "prompt_token_ids": [] if batch else None,
        })

    def _logprobs(self, body: dict[str, Any], tokens: list[int]) -> dict[str, Any] | None:
        """[post] create_completion_logprobs: tokens by decoded text (greedy: logprob 0.0), no top list
        with logprobs=1 on the TensorRT backend."""
        if not body.get("logprobs"):
            return None
        names = [f" t{t}" for t in tokens]
        offsets, at = [], 0
        for name in names:
            offsets.append(at)
            at += len(name)
        return {"text_offset": offsets, "token_logprobs": [0.0] * len(tokens), "tokens": names, "top_logprobs": []}

    async def _stream(self, request: web.Request, body: dict[str, Any], prompt: list[int],
                      started: float) -> web.StreamResponse:
        """[post] completion_stream_post_processor: one chunk per token (every field, nulls included), then [DONE]."""
        knobs = self.knobs
        detokenize = body.get("detokenize", True) is not False
        head = {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
                "model": str(body.get("model"))}
        tokens, ended = self._generate(prompt, self._max_tokens(body, prompt))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        steps = [[t] for t in tokens] + ([[]] if ended or not tokens else [])
        for i, piece in enumerate(steps):
            delay = started + (knobs.rtt_ms + (i + 1) * knobs.decode_ms) / 1000 - asyncio.get_running_loop().time()
            if delay > 0:
                await asyncio.sleep(delay)
            last = i == len(steps) - 1
            choice = {"index": 0, "text": _text(piece) if detokenize else "",
                      "token_ids": None if detokenize else piece, "logprobs": self._logprobs(body, piece),
                      "finish_reason": ("stop" if ended else "length") if last else None, "stop_reason": None,
                      "avg_decoded_tokens_per_iter": 1.0}
            await response.write(b"data: " + msgspec.json.encode({**head, "choices": [choice], "usage": None})
                                 + b"\n\n")
        options = body.get("stream_options") or None
        if options is not None and options.get("include_usage", True):
            chunk = {**head, "choices": [], "usage": usage(len(prompt), len(tokens), details=True)}
            await response.write(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
