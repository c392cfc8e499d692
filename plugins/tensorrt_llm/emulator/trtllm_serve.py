"""trtllm-serve's OpenAI server, emulated: /v1/chat/completions, /v1/completions, /v1/models,
/health, /version and /metrics (iteration statistics). Source tags are those of serve_wire.py.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import msgspec
from aiohttp import web

from plugins.emulation import EmulatorRuntime, Fault, Generation, QueueFull
from plugins.emulation.model import count_tokens
from plugins.emulation.openai_wire import stops
from plugins.tensorrt_llm.chat_templates import BUILTIN_TEMPLATES, render_chat
from plugins.tensorrt_llm.emulator.common import cut, fault_before_answer, generate
from plugins.tensorrt_llm.emulator.serve_tokens import ServeTokenCompletions, token_prompts
from plugins.tensorrt_llm.emulator.serve_wire import (
    ChunkFormat,
    RequestInvalid,
    chat_response,
    completion_response,
    error_response,
    json_response,
    parse_request,
    validation_error,
)
from plugins.vllm.emulator.token_model import TokenKnobs

_SSE = "text/event-stream; charset=utf-8"  # Starlette StreamingResponse(media_type="text/event-stream")
_MAX_ITERATIONS = 1000  # executor kDefaultIterStatsMaxIterations: the stats queue keeps the last 1000
_KV_BLOCKS = 101256  # trtllm-serve.rst's /metrics example: maxNumBlocks 101256, tokensPerBlock 32


def _finish(gen: Generation) -> tuple[str, str | None]:
    """(finish_reason, stop_reason): TensorRT-LLM says "stop" for the end token and for stop strings."""
    if gen.finish == "length":
        return "length", None
    return "stop", gen.stop_sequence


class TrtllmServeEmulator:
    """The OpenAI routes over the fake model, with the executor's iteration stats behind /metrics."""

    def __init__(self, runtime: EmulatorRuntime, model_name: str, max_seq_len: int,
                 token_knobs: TokenKnobs | None = None) -> None:
        self.runtime = runtime
        self.model_name = model_name
        self.max_seq_len = max_seq_len
        # Token-id prompts ([proto] List[int] / List[List[int]]) go to the token model (serve_tokens.py).
        self.tokens = ServeTokenCompletions(runtime, model_name, max_seq_len, token_knobs or TokenKnobs())
        self.iterations: deque[dict[str, Any]] = deque(maxlen=_MAX_ITERATIONS)
        self._iter = 0
        self._completed = 0

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self.chat), web.post("/v1/completions", self.completion),
            web.get("/v1/models", self.models), web.get("/health", self.health), web.get("/version", self.version),
            web.get("/metrics", self.metrics),
        ]

    # -- control plane ([srv] register_routes) --------------------------------------------------

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, _request: web.Request) -> web.Response:
        return json_response({"version": "1.2.0"})

    async def models(self, _request: web.Request) -> web.Response:
        card = {"id": self.model_name, "object": "model", "created": int(time.time()), "owned_by": "tensorrt_llm"}
        return json_response({"object": "list", "data": [card]})

    async def metrics(self, _request: web.Request) -> web.Response:
        """[srv] get_iteration_stats: the queued iteration stats as a JSON list, drained by the read."""
        stats = list(self.iterations)
        self.iterations.clear()
        return json_response(stats)

    def _iteration(self, latency_ms: float) -> None:
        """One executor iteration's stats (field names as in trtllm-serve.rst's example output)."""
        self._iter += 1
        running, waiting = self.runtime.running, self.runtime.waiting
        used = min(_KV_BLOCKS, running * 3)
        capacity = self.runtime.knobs.max_concurrency or 2048
        self.iterations.append({
            "cpuMemUsage": 0, "gpuMemUsage": 76665782272, "iter": self._iter, "iterLatencyMS": latency_ms,
            "kvCacheStats": {"allocNewBlocks": used, "allocTotalBlocks": used, "cacheHitRate": 0.0,
                             "freeNumBlocks": _KV_BLOCKS - used, "maxNumBlocks": _KV_BLOCKS, "missedBlocks": used,
                             "reusedBlocks": 0, "tokensPerBlock": 32, "usedNumBlocks": used},
            "inflightBatchingStats": {"avgNumDecodedTokensPerIter": 1.0, "microBatchId": 0, "numContextRequests": 0,
                                      "numCtxTokens": 0, "numGenRequests": running, "numPausedRequests": 0,
                                      "numScheduledRequests": running},
            "maxBatchSizeRuntime": capacity, "maxBatchSizeStatic": capacity, "maxNumActiveRequests": capacity,
            "numActiveRequests": running, "numCompletedRequests": self._completed, "numQueuedRequests": waiting,
            "pinnedMemUsage": 0, "timestamp": time.strftime("%m-%d-%Y %H:%M:%S"),
        })

    # -- generation ---------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat")

    async def completion(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "completion")

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        try:
            body = parse_request(await request.read(), kind)
        except RequestInvalid as err:
            return validation_error(err)
        if kind == "chat":
            prompt = render_chat(BUILTIN_TEMPLATES["chatml"], body["messages"])  # the model's own template there
        else:
            raw = body["prompt"]
            batch = token_prompts(raw)
            if batch is not None:
                return await self.tokens.serve(request, body, batch)
            prompt = raw if isinstance(raw, str) else " ".join(str(p) for p in raw)
        prompt_tokens = count_tokens(prompt)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if prompt_tokens + (max_tokens or 0) > self.max_seq_len:
            # Raised by the LLM API's argument check and returned by create_error_response ([srv]).
            return error_response(400, f"The sum of prompt length ({prompt_tokens}) and query length (0) max_tokens "
                                       f"({max_tokens}) should not exceed max_seq_len ({self.max_seq_len})")
        failed = await fault_before_answer(request, self.runtime, error_response)
        if failed is not None:
            return failed
        try:
            async with self.runtime.slot():
                gen = generate(self.runtime, prompt, max_tokens, stops(body.get("stop")))
                if body.get("stream"):
                    return await self._stream(request, kind, body, gen, prompt, prompt_tokens)
                return await self._whole(request, kind, body, gen, prompt, prompt_tokens)
        except QueueFull:
            # trtllm-serve has no admission limit of its own; a full emulator queue answers 503.
            return error_response(503, "emulated fault: request queue is full")

    async def _whole(self, request: web.Request, kind: str, body: dict[str, Any], gen: Generation, prompt: str,
                     prompt_tokens: int) -> web.StreamResponse:
        for i in range(len(gen.tokens)):
            await self.runtime.pace(i)
            self._iteration(self.runtime.knobs.tpot_ms)
        self._completed += 1
        finish, stop_reason = _finish(gen)
        model = str(body.get("model"))  # [post] responses echo the request's model name
        if kind == "chat":
            payload = chat_response(model, gen.text, finish, stop_reason, prompt_tokens, len(gen.tokens))
        else:
            text = (prompt if body.get("echo") else "") + gen.text
            payload = completion_response(model, text, finish, stop_reason, prompt_tokens, len(gen.tokens))
        encoded = msgspec.json.encode(payload)
        fault = self.runtime.knobs.fault
        if fault is Fault.MALFORMED_CHUNK:
            encoded = encoded[: len(encoded) // 2]
        elif fault in (Fault.CUT_STREAM, Fault.STREAM_ERROR):
            # A failing executor takes the server down mid-answer (CppExecutorError -> SIGINT in [srv]).
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(encoded)
            await response.prepare(request)
            await response.write(encoded[: len(encoded) // 2])
            cut(request)
            return response
        return web.Response(body=encoded, headers={"Content-Type": "application/json"})

    async def _stream(self, request: web.Request, kind: str, body: dict[str, Any], gen: Generation, prompt: str,
                      prompt_tokens: int) -> web.StreamResponse:
        """[srv] chat_stream_generator / [post] stream post-processors, one event per token, then [DONE]."""
        fmt = ChunkFormat(kind, str(body.get("model")))
        fault = self.runtime.knobs.fault
        # No in-stream error format: a failing generator drops the connection, like a cut.
        fault_at = self.runtime.knobs.fault_after_tokens if fault in (
            Fault.CUT_STREAM, Fault.MALFORMED_CHUNK, Fault.STREAM_ERROR) else None
        response = web.StreamResponse(headers={"Content-Type": _SSE})
        await response.prepare(request)  # StreamingResponse sends its headers before the first token
        if kind == "chat":
            await response.write(fmt.role())
        finish, stop_reason = _finish(gen)
        last = len(gen.tokens) - 1
        for i, token in enumerate(gen.tokens):
            await self.runtime.pace(i)
            self._iteration(self.runtime.knobs.tpot_ms)
            if i == fault_at and fault is not Fault.MALFORMED_CHUNK:
                cut(request)
                return response
            text = (prompt if i == 0 and kind == "completion" and body.get("echo") else "") + token
            event = fmt.text(text, finish if i == last else None, stop_reason if i == last else None)
            if i == fault_at:
                event = event[: len(event) // 2] + b"\n\n"
            await response.write(event)
        if not gen.tokens:
            await response.write(fmt.text("", finish, stop_reason))
        options = body.get("stream_options") or None
        # [proto] StreamOptions.include_usage defaults to True once stream_options is given.
        if options is not None and options.get("include_usage", True):
            await response.write(fmt.usage(prompt_tokens, len(gen.tokens)))
        await response.write(b"data: [DONE]\n\n")
        self._completed += 1
        await response.write_eof()
        return response
