"""Triton's `tensorrt_llm` model (token ids in, token ids out), emulated over the generate extension,
with TensorRT-LLM's native external-draft verification (`draft_input_ids`).

The model is the input-grounded greedy token model of plugins/vllm/emulator/token_model.py (imported,
not copied), with GPU-like costs: `rtt_ms` per call, `decode_ms` per forward step, `verify_token_ms` per
draft token checked in one step. Sources, besides the tags of triton_wire.py:
- [cfg]  NVIDIA/TensorRT-LLM triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt
         (input names and types; input_lengths and request_output_len are the only required ones)
- [mis]  NVIDIA/TensorRT-LLM triton_backend/inflight_batcher_llm/src/model_instance_state.cc
         fillTritonResponse: output_ids [1, beams, len] and sequence_length [1, beams] = the executor's
         output token count (input included unless exclude_input_in_output); other outputs only when asked
- [e2e]  NVIDIA/TensorRT-LLM triton_backend/inflight_batcher_llm/client/e2e_grpc_speculative_decoding_client.py
         (input_ids = committed, draft_input_ids = draft, request_output_len = len(draft) + 1)
- [eos]  NVIDIA/TensorRT-LLM issue #2190: the executor stops at end_id but leaves it out of the output;
         end_id defaults to -1 (docs/model_config.md), i.e. no end token unless the request names one
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from plugins.emulation import EmulatorRuntime, QueueFull
from plugins.tensorrt_llm.emulator.common import fault_before_answer
from plugins.tensorrt_llm.emulator.triton_wire import TritonError, error_response, parse_request, sse_event
from plugins.vllm.emulator.token_model import TokenKnobs, TokenSequence

MODEL_NAME = "tensorrt_llm"
_encode = msgspec.json.Encoder(order="sorted").encode

# [cfg] the inputs the emulator reads or accepts (JSON kinds as in triton_wire.ENSEMBLE_INPUTS).
TOKEN_INPUTS: dict[str, str] = {
    "input_ids": "i", "input_lengths": "i", "request_output_len": "i", "num_return_sequences": "i",
    "draft_input_ids": "i", "draft_acceptance_threshold": "f", "end_id": "i", "pad_id": "i", "beam_width": "i",
    "temperature": "f", "runtime_top_k": "i", "runtime_top_p": "f", "repetition_penalty": "f", "min_tokens": "i",
    "presence_penalty": "f", "frequency_penalty": "f", "seed": "u", "return_log_probs": "b",
    "return_context_logits": "b", "return_generation_logits": "b", "return_perf_metrics": "b",
    "return_num_input_tokens": "b", "return_num_output_tokens": "b", "exclude_input_in_output": "b", "stop": "b",
    "streaming": "b",
}
TOKEN_REQUIRED = ("input_lengths", "request_output_len")  # [cfg] the two inputs without `optional: true`


def _scalar(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _tensor(values: list[int]) -> int | list[int]:
    # [http] a one-element output tensor is written as a scalar, any other as a (flattened) list.
    return values[0] if len(values) == 1 else values


@dataclass
class TokenRun:
    """One request's answer: the generated ids (an end token never among them, [eos]), whether it
    stopped on end_id, and the draft tokens it checked and accepted."""

    generated: list[int]
    stopped_on_end: bool
    drafted: int
    accepted: int


def run_request(knobs: TokenKnobs, prompt: list[int], draft: list[int], max_new: int, end_id: int) -> TokenRun:
    """Greedy decoding of `prompt`, or (with a draft) TensorRT-LLM's draft acceptance: drafts are kept
    while each equals the model's greedy token, then one more token (the correction or the bonus) [e2e]."""
    sequence = TokenSequence([*prompt, *draft], knobs)
    out: list[int] = []
    accepted = 0
    for i, proposed in enumerate(draft[:max_new]):
        token = sequence.next_token(len(prompt) + i)
        if token == end_id:
            return TokenRun(out, True, len(draft), accepted)
        out.append(token)
        if token != proposed:
            return TokenRun(out, False, len(draft), accepted)
        accepted += 1
    # Past the (fully accepted) draft, or without one: plain decoding (the sequence already holds the draft).
    while len(out) < max_new:
        token = sequence.next_token()
        if token == end_id:
            return TokenRun(out, True, len(draft), accepted)
        out.append(token)
        sequence.extend((token,))
    return TokenRun(out, False, len(draft), accepted)


def token_response(inputs: dict[str, Any], ids: list[int], extra: dict[str, Any] | None = None) -> bytes:
    """[mis] one response of the tensorrt_llm model: output_ids and sequence_length for beam 0, plus
    id/model_name/model_version ([http] FinalizeResponse) and what the request asked for."""
    response: dict[str, Any] = {
        "model_name": MODEL_NAME, "model_version": "1", "output_ids": _tensor(ids), "sequence_length": len(ids),
    }
    if "__id__" in inputs:
        response["id"] = inputs["__id__"]
    return _encode({**response, **(extra or {})})


class TritonTokenModel:
    """The `tensorrt_llm` model behind Triton's generate and generate_stream endpoints."""

    def __init__(self, runtime: EmulatorRuntime, knobs: TokenKnobs, exclude_input_in_output: bool) -> None:
        self.runtime = runtime
        self.knobs = knobs
        self.exclude_default = exclude_input_in_output

    def update(self, changes: dict[str, Any]) -> TokenKnobs:
        """Apply a partial update of the token knobs (validated as a whole)."""
        self.knobs = msgspec.convert({**msgspec.structs.asdict(self.knobs), **changes}, TokenKnobs)
        return self.knobs

    async def serve(self, request: web.Request, *, endpoint_streams: bool) -> web.StreamResponse:
        """One generate or generate_stream call on the tensorrt_llm model."""
        started = asyncio.get_running_loop().time()
        try:
            inputs = parse_request(await request.read(), MODEL_NAME, TOKEN_INPUTS, TOKEN_REQUIRED)
            prompt, draft, max_new, end_id = self._checked(inputs)
        except TritonError as err:
            return error_response(err.status, err.message)
        failed = await fault_before_answer(request, self.runtime, error_response)
        if failed is not None:
            return failed
        try:
            async with self.runtime.slot():
                run = run_request(self.knobs, prompt, draft, max_new, end_id)
                if endpoint_streams and _scalar(inputs.get("streaming")) is True:
                    return await self._stream(request, inputs, run, started)
                return await self._whole(request, inputs, prompt, run, started, as_event=endpoint_streams)
        except QueueFull:
            return error_response(503, "Exceeds maximum queue size")

    def _checked(self, inputs: dict[str, Any]) -> tuple[list[int], list[int], int, int]:
        prompt = _ids(inputs.get("input_ids"))
        if not prompt:
            # The emulator has no encoder path (encoder_input_features), so input_ids are needed.
            raise TritonError(400, "emulator: the tensorrt_llm model needs input_ids")
        max_new = int(_scalar(inputs["request_output_len"]))
        if max_new <= 0:
            raise TritonError(400, "emulator: request_output_len must be positive")
        if int(_scalar(inputs.get("beam_width", 1))) != 1:
            raise TritonError(400, "emulator: only beam_width 1 is emulated")
        end_id = int(_scalar(inputs.get("end_id", -1)))  # [eos] -1: no end token
        return prompt, _ids(inputs.get("draft_input_ids")), max_new, end_id

    def _cost_s(self, steps: int, drafted: int) -> float:
        """A draft is checked in one forward pass (`decode_ms` + `verify_token_ms` per draft token);
        tokens after it cost one step each."""
        knobs = self.knobs
        return (knobs.rtt_ms + steps * knobs.decode_ms + drafted * knobs.verify_token_ms) / 1000

    def _steps(self, run: TokenRun) -> int:
        # The draft pass yields accepted + 1 tokens; anything beyond (no draft) is one step per token.
        produced = len(run.generated) + (1 if run.stopped_on_end else 0)
        return 1 + max(0, produced - run.accepted - 1) if run.drafted else max(produced, 1)

    async def _whole(self, request: web.Request, inputs: dict[str, Any], prompt: list[int], run: TokenRun,
                     started: float, *, as_event: bool) -> web.StreamResponse:
        await _sleep_until(started + self._cost_s(self._steps(run), run.drafted))
        exclude = _scalar(inputs.get("exclude_input_in_output", self.exclude_default)) is True
        ids = run.generated if exclude else [*prompt, *run.generated]
        extra = None
        if _scalar(inputs.get("return_perf_metrics")) is True:
            # [docs] model_config.md: the speculative-decoding and KV-reuse perf outputs.
            extra = {"acceptance_rate": run.accepted / run.drafted if run.drafted else 0.0,
                     "total_accepted_draft_tokens": run.accepted, "total_draft_tokens": run.drafted,
                     "kv_cache_alloc_new_blocks": 0, "kv_cache_reused_blocks": 0, "kv_cache_alloc_total_blocks": 0}
        body = token_response(inputs, ids, extra)
        # [http] StartResponse: a chunked body for both endpoints; generate_stream frames it as an SSE event.
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8" if as_event else "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(sse_event(body) if as_event else body)
        await response.write_eof()
        return response

    async def _stream(self, request: web.Request, inputs: dict[str, Any], run: TokenRun,
                      started: float) -> web.StreamResponse:
        """One event per token as the executor streams them (new tokens only; the emulator assumes the
        input is never echoed in streaming mode), and an empty final event when the run stopped on
        end_id, since the end token itself is not returned [eos]."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        response.enable_chunked_encoding()
        for i, token in enumerate(run.generated):
            # Tokens of the draft pass (accepted + 1) leave together; later ones one step each.
            step = 1 + max(0, i - run.accepted) if run.drafted else i + 1
            await _sleep_until(started + self._cost_s(step, run.drafted))
            if i == 0:
                await response.prepare(request)  # [http] headers go out with the first response
            await response.write(sse_event(token_response(inputs, [token])))
        if not run.generated or run.stopped_on_end:
            await _sleep_until(started + self._cost_s(self._steps(run), run.drafted))
            if not response.prepared:
                await response.prepare(request)
            await response.write(sse_event(token_response(inputs, [])))
        await response.write_eof()
        return response


async def _sleep_until(deadline: float) -> None:
    """Sleep until the event loop's clock reads `deadline` (not at all when it already has)."""
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)
