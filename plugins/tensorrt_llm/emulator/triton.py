"""Triton Inference Server's HTTP routes in front of the TensorRT-LLM ensemble, emulated.

Routes ([http] src/http_server.cc): POST /v2/models/{m}[/versions/{v}]/generate and
/generate_stream, GET /v2/health/live, /v2/health/ready, /v2/models/{m}/ready; and /metrics,
which real Triton serves on its own port (--metrics-port, default 8002) and which the emulator
serves on its one port. Source tags are those of triton_wire.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from plugins.emulation import EmulatorRuntime, Fault, QueueFull
from plugins.emulation.model import count_tokens
from plugins.tensorrt_llm.emulator.common import cut, fault_before_answer, generate
from plugins.tensorrt_llm.emulator.triton_metrics import TritonCounters, metrics_page
from plugins.tensorrt_llm.emulator.triton_tokens import MODEL_NAME as TOKEN_MODEL
from plugins.tensorrt_llm.emulator.triton_tokens import TritonTokenModel
from plugins.tensorrt_llm.emulator.triton_wire import (
    TritonError,
    error_body,
    error_response,
    generate_response,
    parse_request,
    sse_event,
    strings,
)
from plugins.vllm.emulator.token_model import TokenKnobs

_SSE = "text/event-stream; charset=utf-8"  # [http] StartResponse, streaming
_JSON = "application/json"


def _scalar(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


@dataclass
class _Reply:
    """One request's generation as the ensemble returns it."""

    pieces: list[str]  # text of each generated token; a matched stop word stays, as TensorRT-LLM keeps it
    prompt: str
    prompt_tokens: int
    echo_prompt: bool  # exclude_input_in_output false: the prompt comes back in front of the reply


def _reply(runtime: EmulatorRuntime, inputs: dict[str, Any], exclude_default: bool) -> _Reply:
    prompt = str(_scalar(inputs["text_input"]))
    gen = generate(runtime, prompt, int(_scalar(inputs["max_tokens"])), strings(inputs.get("stop_words")))
    pieces = list(gen.tokens)
    if gen.finish == "stop" and gen.stop_sequence:
        # [docs] llama.md: stop_words ["focuses", "learn"] answers "...allows computers to learn".
        pieces.append(gen.stop_sequence)
    exclude = _scalar(inputs.get("exclude_input_in_output", exclude_default))
    return _Reply(pieces, prompt, count_tokens(prompt), echo_prompt=exclude is not True)


async def _start(request: web.Request, status: int, content_type: str) -> web.StreamResponse:
    # [http] StartResponse: evhtp_send_reply_chunk_start, i.e. a chunked body, for both endpoints.
    response = web.StreamResponse(status=status, headers={"Content-Type": content_type})
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


class TritonEmulator:
    """The generate extension with the fake model, the shared knobs and Triton's counters.

    Besides the ensemble (`model_name`), the model repository's `tensorrt_llm` model answers token ids
    (triton_tokens.py), as in the inflight_batcher_llm repository that serves both.
    """

    def __init__(self, runtime: EmulatorRuntime, model_name: str, exclude_input_in_output: bool,
                 token_knobs: TokenKnobs | None = None) -> None:
        self.runtime = runtime
        self.model_name = model_name
        self.exclude_default = exclude_input_in_output
        self.counters = TritonCounters()
        self.tokens = TritonTokenModel(runtime, token_knobs or TokenKnobs(), exclude_input_in_output)

    def routes(self) -> list[web.RouteDef]:
        base = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version}"
        return [
            web.post(base + "/generate", self.generate), web.post(versioned + "/generate", self.generate),
            web.post(base + "/generate_stream", self.generate_stream),
            web.post(versioned + "/generate_stream", self.generate_stream),
            web.get(base + "/ready", self.model_ready), web.get("/v2/health/ready", self.ok),
            web.get("/v2/health/live", self.ok), web.get("/metrics", self.metrics),
        ]

    async def ok(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def model_ready(self, request: web.Request) -> web.Response:
        if request.match_info["model"] in (self.model_name, TOKEN_MODEL):
            return web.Response(status=200)
        return error_response(400, "Model version not ready")  # [http] HandleModelReady

    async def metrics(self, _request: web.Request) -> web.Response:
        body = metrics_page(self.runtime, self.counters, self.model_name)
        return web.Response(body=body.encode(), headers={"Content-Type": "text/plain; charset=utf-8"})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, endpoint_streams=False)

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, endpoint_streams=True)

    async def _serve(self, request: web.Request, *, endpoint_streams: bool) -> web.StreamResponse:
        model = request.match_info["model"]
        if model == TOKEN_MODEL and model != self.model_name:
            return await self.tokens.serve(request, endpoint_streams=endpoint_streams)
        if model != self.model_name:
            # [core] model_repository_manager: NOT_FOUND "Request for unknown model: '<m>' is not found".
            return error_response(404, f"Request for unknown model: '{model}' is not found")
        try:
            inputs = parse_request(await request.read(), model)
        except TritonError as err:
            self.counters.failure += 1
            return error_response(err.status, err.message)
        failed = await fault_before_answer(request, self.runtime, error_response)
        if failed is not None:
            self.counters.failure += 1
            return failed
        try:
            async with self.runtime.slot():
                reply = _reply(self.runtime, inputs, self.exclude_default)
                streaming = endpoint_streams and _scalar(inputs.get("stream")) is True
                if streaming:
                    return await self._stream(request, inputs, reply)
                return await self._whole(request, inputs, reply, endpoint_streams)
        except QueueFull:
            # [core] scheduler_utils.cc RequestQueue: UNAVAILABLE "Exceeds maximum queue size" -> 503.
            self.counters.failure += 1
            return error_response(503, "Exceeds maximum queue size")

    async def _whole(self, request: web.Request, inputs: dict[str, Any], reply: _Reply,
                     as_event: bool) -> web.StreamResponse:
        """One response for the whole generation (generate, or generate_stream without `stream`)."""
        for i in range(len(reply.pieces)):
            await self.runtime.pace(i)
        fault = self.runtime.knobs.fault
        if fault is Fault.STREAM_ERROR:
            # The only response is an error, so its code sets the status ([http] InferResponseComplete).
            self.counters.failure += 1
            return error_response(500, "emulated fault: TensorRT-LLM executor failed the request")
        text = (reply.prompt if reply.echo_prompt else "") + "".join(reply.pieces)
        payload = generate_response(self.model_name, text, len(reply.pieces), inputs, reply.prompt_tokens)
        body = sse_event(payload) if as_event else payload
        response = await _start(request, 200, _SSE if as_event else _JSON)
        if fault is Fault.MALFORMED_CHUNK:
            await response.write(body[: len(body) // 2] + (b"\n\n" if as_event else b""))
        elif fault is Fault.CUT_STREAM:
            await response.write(body[: len(body) // 2])
            cut(request)
            return response
        else:
            await response.write(body)
        self.counters.success += 1
        await response.write_eof()
        return response

    async def _stream(self, request: web.Request, inputs: dict[str, Any], reply: _Reply) -> web.StreamResponse:
        """One SSE event per token; the stream ends with the chunked body, no end marker ([http])."""
        runtime = self.runtime
        fault = runtime.knobs.fault
        fault_at = runtime.knobs.fault_after_tokens if fault in (
            Fault.CUT_STREAM, Fault.MALFORMED_CHUNK, Fault.STREAM_ERROR) else None
        response: web.StreamResponse | None = None
        for i, piece in enumerate(reply.pieces):
            await runtime.pace(i)
            if i == fault_at and fault is Fault.STREAM_ERROR:
                # [gen] an error after the first response is an event under the 200 already sent;
                # as the first response, its code is the status ([http] InferResponseComplete).
                if response is None:
                    response = await _start(request, 500, _SSE)
                await response.write(sse_event(error_body("emulated fault: TensorRT-LLM executor failed the request")))
                self.counters.failure += 1
                await response.write_eof()
                return response
            if response is None:
                # [http] headers go out with the first response, not before.
                response = await _start(request, 200, _SSE)
            if i == fault_at and fault is Fault.CUT_STREAM:
                cut(request)
                return response
            # Assumed from docs/model_config.md ("return the prompt tokens concatenated with the
            # generated tokens"): without exclude_input_in_output the first response carries the prompt.
            text = (reply.prompt if i == 0 and reply.echo_prompt else "") + piece
            payload = generate_response(self.model_name, text, 1, inputs, reply.prompt_tokens)
            if i == fault_at and fault is Fault.MALFORMED_CHUNK:
                payload = payload[: len(payload) // 2]
            await response.write(sse_event(payload))
        if response is None:
            response = await _start(request, 200, _SSE)
        self.counters.success += 1
        await response.write_eof()
        return response
