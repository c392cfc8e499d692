"""vLLM's /v1/completions for token-id prompts (one list of ids, or a batch of them), answered by the
input-grounded token model of token_model.py with GPU-like costs (rtt_ms, decode_ms, verify_token_ms):
the target of the gateway's speculative-decoding tests and benchmark. Also vLLM's `prompt_logprobs`
for such prompts, and the knobs route that sets the token knobs beside the shared ones.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from aiohttp import web

from plugins.emulation import EmulatorRuntime, QueueFull
from plugins.emulation.openai_wire import (
    SSE_DONE,
    fault_before_answer,
    include_usage,
    json_response,
    new_id,
    sse_data,
)
from plugins.vllm.emulator import wire
from plugins.vllm.emulator.token_model import TokenKnobs, TokenSequence


def token_prompts(raw: Any) -> list[list[int]] | None:
    """vLLM's token-id prompts: one list of ids (a batch of one) or a list of such lists; None for text."""
    if isinstance(raw, list) and raw and all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
        return [raw]
    if isinstance(raw, list) and raw and all(
        isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p) for p in raw
    ):
        return [list(p) for p in raw]
    return None


def _token_logprobs(tokens: list[int], top: int, offset: int) -> dict[str, Any]:
    """vLLM's CompletionLogProbs with return_tokens_as_token_ids: tokens named "token_id:<id>".

    The model is a greedy function, so the chosen token has probability 1 (logprob 0.0) and any other
    shown alternative gets vLLM's floor for -inf (-9999.0); `offset` is where the text starts.
    """
    names = [f"token_id:{t}" for t in tokens]
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(_token_text(t))
    top_logprobs = []
    for t, name in zip(tokens, names, strict=True):
        entry = {name: 0.0}
        for extra in range(1, top):  # distinct stand-ins for the runners-up
            entry[f"token_id:{(t + extra) % 32_000}"] = -9999.0
        top_logprobs.append(entry)
    return {"text_offset": offsets, "token_logprobs": [0.0] * len(tokens), "tokens": names,
            "top_logprobs": top_logprobs}


def _prompt_logprobs(sequence: TokenSequence, prompt: list[int], top: int) -> list[dict[str, Any] | None]:
    """vLLM's `prompt_logprobs` for a token-id prompt: per position p >= 1, the prompt token with its rank
    and the top `top` candidates (keys are ids). The model is greedy and certain: its own choice after
    prompt[:p] has logprob 0.0 and rank 1, every other shown token vLLM's floor -9999.0, with positional
    ranks; a prompt token that is not the choice ranks 2."""
    out: list[dict[str, Any] | None] = [None]
    for p in range(1, len(prompt)):
        choice = sequence.next_token(p)
        entry: dict[str, Any] = {str(choice): {"logprob": 0.0, "rank": 1, "decoded_token": _token_text(choice)}}
        for extra in range(1, top):
            stand_in = (choice + extra) % 32_000
            entry[str(stand_in)] = {"logprob": -9999.0, "rank": extra + 1, "decoded_token": _token_text(stand_in)}
        if prompt[p] != choice:
            entry[str(prompt[p])] = {"logprob": -9999.0, "rank": 2, "decoded_token": _token_text(prompt[p])}
        out.append(entry)
    return out


def _token_text(token: int) -> str:
    return f" t{token}"


async def _sleep_until(deadline: float) -> None:
    """Sleep until the event loop's clock reads `deadline` (not at all when it already has)."""
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


class TokenCompletions:
    """/v1/completions for token-id prompts: the input-grounded token model with GPU-like costs.

    Costs model a GPU serving a batch: every call pays `rtt_ms`; every decode step pays `decode_ms`
    plus `verify_token_ms` per extra sequence in the batch (the k+1 prefixes of a V-B verify share one
    forward pass, each extra one costing little). A stream sleeps before each token as it goes.
    """

    def __init__(self, runtime: EmulatorRuntime, model: str, max_model_len: int, knobs: TokenKnobs) -> None:
        self.runtime = runtime
        self.model = model
        self.max_model_len = max_model_len
        self.knobs = knobs

    def update(self, changes: dict[str, Any]) -> TokenKnobs:
        """Apply a partial update of the token knobs (validated as a whole)."""
        self.knobs = msgspec.convert({**msgspec.structs.asdict(self.knobs), **changes}, TokenKnobs)
        return self.knobs

    def _generate(self, prompt: list[int], max_tokens: int) -> list[int]:
        sequence = TokenSequence(prompt, self.knobs)
        out: list[int] = []
        while len(out) < max_tokens:
            token = sequence.next_token()
            out.append(token)
            if token == self.knobs.eos_token_id:
                break
            sequence.extend((token,))
        return out

    def _finish(self, tokens: list[int], max_tokens: int) -> str:
        return "stop" if tokens and tokens[-1] == self.knobs.eos_token_id and len(tokens) <= max_tokens else "length"

    def _text(self, tokens: list[int]) -> str:
        # skip_special_tokens: EOS has no text.
        return "".join(_token_text(t) for t in tokens if t != self.knobs.eos_token_id)

    async def serve(self, request: web.Request, body: dict[str, Any], prompts: list[list[int]]) -> web.StreamResponse:
        # Costs are paced against deadlines from here, so the emulator's own CPU time (indexing the
        # prompt, JSON) is inside the emulated cost, as a GPU's work is inside its forward pass,
        # rather than added on top of it, and sleep overshoot does not accumulate over a stream.
        started = asyncio.get_running_loop().time()
        limit = self.max_model_len
        for prompt in prompts:
            if len(prompt) >= limit:
                return wire.prompt_too_long(len(prompt), limit)
        requested = body.get("max_tokens")
        if isinstance(requested, int) and requested > limit:
            return wire.max_tokens_too_large(requested, limit)
        stream = bool(body.get("stream"))
        if stream and len(prompts) > 1:
            return wire.error_response(400, "emulator: streaming a batch of token-id prompts is not emulated")
        raw_logprobs = body.get("logprobs")
        logprobs = raw_logprobs if isinstance(raw_logprobs, int) and not isinstance(raw_logprobs, bool) else None
        failed = await fault_before_answer(request, self.runtime, wire.error_response)
        if failed is not None:
            return failed
        try:
            async with self.runtime.slot():
                if stream:
                    prompt = prompts[0]
                    max_tokens = min(requested or limit, limit - len(prompt))
                    return await self._stream(request, body, prompt, max_tokens, logprobs, started)
                raw_prompt_logprobs = body.get("prompt_logprobs")
                prompt_logprobs = (raw_prompt_logprobs if isinstance(raw_prompt_logprobs, int)
                                   and not isinstance(raw_prompt_logprobs, bool) else None)
                return await self._whole(prompts, requested, logprobs, started, prompt_logprobs)
        except QueueFull:
            return wire.error_response(503, "emulated fault: request queue is full")

    async def _whole(self, prompts: list[list[int]], requested: int | None, logprobs: int | None,
                     started: float, prompt_logprobs: int | None = None) -> web.Response:
        knobs = self.knobs
        choices, prompt_total, completion_total, steps = [], 0, 0, 0
        # Longer prompts of the batch usually extend shorter ones (a V-B verify), so their index is shared.
        longest = max(prompts, key=len)
        shared = TokenSequence(longest, knobs)
        for index, prompt in enumerate(prompts):
            max_tokens = min(requested or self.max_model_len, self.max_model_len - len(prompt))
            if max_tokens == 1 and longest[: len(prompt)] == prompt:
                tokens = [shared.next_token(len(prompt))]
            else:
                tokens = self._generate(prompt, max_tokens)
            steps = max(steps, len(tokens))
            prompt_total += len(prompt)
            completion_total += len(tokens)
            choices.append({
                "index": index, "text": self._text(tokens),
                "logprobs": None if logprobs is None else _token_logprobs(tokens, max(logprobs, 1), 0),
                "finish_reason": self._finish(tokens, max_tokens), "stop_reason": None, "token_ids": None,
                "prompt_logprobs": None if prompt_logprobs is None else _prompt_logprobs(
                    shared if longest[: len(prompt)] == prompt else TokenSequence(prompt, knobs), prompt,
                    max(prompt_logprobs, 1)),
                "prompt_token_ids": None, "routed_experts": None,
            })
        per_step = knobs.decode_ms + (len(prompts) - 1) * knobs.verify_token_ms
        await _sleep_until(started + (knobs.rtt_ms + steps * per_step) / 1000)
        usage = {"prompt_tokens": prompt_total, "total_tokens": prompt_total + completion_total,
                 "completion_tokens": completion_total, "prompt_tokens_details": None,
                 "completion_tokens_details": None}
        return json_response({
            "id": new_id("cmpl", 16), "object": "text_completion", "created": int(time.time()), "model": self.model,
            "choices": choices, "service_tier": None, "system_fingerprint": wire.FINGERPRINT, "usage": usage,
            "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None,
        })

    async def _stream(self, request: web.Request, body: dict[str, Any], prompt: list[int], max_tokens: int,
                      logprobs: int | None, started: float) -> web.StreamResponse:
        knobs = self.knobs
        head = {"id": new_id("cmpl", 16), "object": "text_completion", "created": int(time.time()),
                "model": self.model}
        response = web.StreamResponse(headers={"Content-Type": wire.SSE_CONTENT_TYPE})
        await response.prepare(request)
        sequence = TokenSequence(prompt, knobs)
        produced, offset = 0, 0
        while produced < max_tokens:
            token = sequence.next_token()
            produced += 1
            # Token i leaves after the call's rtt and i + 1 forward passes.
            await _sleep_until(started + (knobs.rtt_ms + produced * knobs.decode_ms) / 1000)
            eos = token == knobs.eos_token_id
            last = eos or produced == max_tokens
            text = "" if eos else _token_text(token)
            choice = {"index": 0, "text": text,
                      "logprobs": None if logprobs is None else _token_logprobs([token], max(logprobs, 1), offset),
                      "finish_reason": ("stop" if eos else "length") if last else None, "stop_reason": None,
                      "prompt_token_ids": None, "token_ids": None}
            offset += len(text)
            chunk: dict[str, Any] = {**head, "choices": [choice]}
            usage = include_usage(body, default_when_given=True)
            if last and not usage:
                chunk["system_fingerprint"] = wire.FINGERPRINT
            await response.write(sse_data(chunk))
            if last:
                if usage:
                    counts = {"prompt_tokens": len(prompt), "total_tokens": len(prompt) + produced,
                              "completion_tokens": produced}
                    await response.write(sse_data({**head, "choices": [], "usage": counts,
                                                        "system_fingerprint": wire.FINGERPRINT}))
                break
            sequence.extend((token,))
        await response.write(SSE_DONE)
        await response.write_eof()
        return response


def knob_routes(runtime: EmulatorRuntime, tokens: TokenCompletions) -> list[web.RouteDef]:
    """`GET/POST /__emulator/knobs` over both the shared knobs and the token model's (one flat object)."""
    token_fields = set(TokenKnobs.__struct_fields__)

    def merged() -> web.Response:
        body = {**msgspec.structs.asdict(runtime.knobs), **msgspec.structs.asdict(tokens.knobs)}
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")

    async def get_knobs(_request: web.Request) -> web.Response:
        return merged()

    async def set_knobs(request: web.Request) -> web.Response:
        try:
            changes = msgspec.json.decode(await request.read())
            if not isinstance(changes, dict):
                raise TypeError("knobs must be a JSON object")
            # Validate both parts before applying either, so a bad update changes nothing.
            own = {k: v for k, v in changes.items() if k in token_fields}
            msgspec.convert({**msgspec.structs.asdict(tokens.knobs), **own}, TokenKnobs)
            runtime.update({k: v for k, v in changes.items() if k not in token_fields})
            tokens.update(own)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as err:
            return web.json_response({"error": str(err)}, status=400)
        return merged()

    return [web.get("/__emulator/knobs", get_knobs), web.post("/__emulator/knobs", set_knobs)]
