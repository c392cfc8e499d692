"""llama-server, emulated: /v1/chat/completions, /v1/completions, /v1/models, /health, /tokenize,
/detokenize, /metrics and /slots, on the shared emulator machinery (plugins/emulation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from plugins.emulation import EmulatorRuntime, QueueFull
from plugins.emulation.model import Generation, count_tokens
from plugins.emulation.openai_wire import (
    WordVocab,
    chat_prompt,
    completion_prompt,
    fault_before_answer,
    generate,
    include_usage,
    json_body,
    json_response,
    stops,
    stream_answer,
    trailing_assistant,
    whole_answer,
)
from plugins.emulation.runtime import control_routes
from plugins.llamacpp.emulator import wire
from plugins.llamacpp.emulator.slots import Slot, SlotTable


@dataclass(frozen=True)
class ServerArgs:
    """llama-server's flags that shape its answers: --alias, --ctx-size and --parallel."""

    alias: str = "smollm2"
    ctx_size: int = 2048
    parallel: int = 2


class _CountingEvents:
    """A stream's events that also advance the slot's decoded count, as /slots shows it mid-stream."""

    def __init__(self, inner: wire.LlamaStreamEvents, slot: Slot | None) -> None:
        self.inner, self.slot = inner, slot

    def opening(self) -> list[bytes]:
        return self.inner.opening()

    def token(self, text: str, last: bool) -> bytes:
        if self.slot is not None:
            self.slot.n_decoded += 1
        return self.inner.token(text, last)

    def closing(self) -> list[bytes]:
        return self.inner.closing()

    def error(self) -> list[bytes]:
        return self.inner.error()


class LlamaCppEmulator:
    """The routes over the fake model; requests_processing/deferred come from the runtime."""

    def __init__(self, runtime: EmulatorRuntime, args: ServerArgs) -> None:
        self.runtime = runtime
        self.args = args
        self.slots = SlotTable(args.parallel, args.ctx_size)
        self.vocab = WordVocab(49152)
        self.totals = {"prompt_tokens_total": 0.0, "tokens_predicted_total": 0.0, "n_decode_total": 0.0,
                       "n_tokens_max": 0.0}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self.chat), web.post("/v1/completions", self.completion),
            web.get("/v1/models", self.models), web.get("/health", self.health), web.get("/metrics", self.metrics),
            web.get("/slots", self.get_slots), web.post("/tokenize", self.tokenize),
            web.post("/detokenize", self.detokenize),
        ]

    async def health(self, _request: web.Request) -> web.Response:
        return json_response({"status": "ok"}, content_type=wire.JSON_CONTENT_TYPE)

    async def models(self, _request: web.Request) -> web.Response:
        """Both lists the recorded server sends: Ollama-style `models` and OpenAI's `data`."""
        alias = self.args.alias
        details = {"parent_model": "", "format": "gguf", "family": "", "families": [""], "parameter_size": "",
                   "quantization_level": ""}
        listing = {"name": alias, "model": alias, "modified_at": "", "size": "", "digest": "", "type": "model",
                   "description": "", "tags": [""], "capabilities": ["completion"], "parameters": "",
                   "details": details}
        meta = {"vocab_type": 2, "n_vocab": self.vocab.size, "n_ctx": self.slots.n_ctx, "n_ctx_train": 8192,
                "n_embd": 576, "n_params": 134515008, "size": 96576768, "ftype": "Q4_1"}
        card = {"id": alias, "aliases": [alias], "tags": [], "object": "model",
                "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
                "created": int(time.time()), "owned_by": "llamacpp", "meta": meta}
        return json_response({"models": [listing], "object": "list", "data": [card]},
                             content_type=wire.JSON_CONTENT_TYPE)

    async def metrics(self, _request: web.Request) -> web.Response:
        values = {**self.totals, "requests_processing": float(self.runtime.running),
                  "requests_deferred": float(self.runtime.waiting), "n_busy_slots_per_decode": 1.0}
        page = wire.metrics_page(values).encode()
        # `body=`, not `text=`: aiohttp would add a charset the real server does not send.
        return web.Response(body=page, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def get_slots(self, _request: web.Request) -> web.Response:
        return json_response(self.slots.to_json(), content_type=wire.JSON_CONTENT_TYPE)

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        return json_response({"tokens": self.vocab.encode(str(body.get("content", "")))},
                             content_type=wire.JSON_CONTENT_TYPE)

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        return json_response({"content": self.vocab.decode(list(body.get("tokens") or []))},
                             content_type=wire.JSON_CONTENT_TYPE)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat")

    async def completion(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "completion")

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        body = await json_body(request)
        if kind == "chat" and "messages" not in body:
            return wire.error_response(400, "'messages' is required")
        prompt = chat_prompt(body["messages"]) if kind == "chat" else completion_prompt(body.get("prompt"))
        prompt_tokens = count_tokens(prompt)
        if prompt_tokens >= self.slots.n_ctx:
            return wire.exceeds_context(prompt_tokens, self.slots.n_ctx)
        failed = await fault_before_answer(request, self.runtime, wire.error_response)
        if failed is not None:
            return failed
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        # --prefill-assistant is on by default: a trailing assistant message is continued, not answered.
        prefill = (trailing_assistant(body["messages"]) or "") if kind == "chat" else ""
        try:
            async with self.runtime.slot():
                gen = generate(self.runtime, prompt, max_tokens, stops(body.get("stop")), prefill)
                temperature = body.get("temperature")
                slot = self.slots.take(prompt_tokens, max_tokens if isinstance(max_tokens, int) else -1,
                                       stream=bool(body.get("stream")),
                                       temperature=float(temperature) if temperature is not None else 0.8)
                try:
                    return await self._answer(request, kind, body, gen, prompt, slot, prefill)
                finally:
                    if slot is not None:
                        slot.busy = False  # the slot keeps its prompt (the cache) once idle
                    self._count(gen)
        except QueueFull:
            return wire.error_response(503, "emulated fault: request queue is full")

    def _count(self, gen: Generation) -> None:
        self.totals["prompt_tokens_total"] += gen.prompt_tokens
        self.totals["tokens_predicted_total"] += len(gen.tokens)
        self.totals["n_decode_total"] += len(gen.tokens)
        self.totals["n_tokens_max"] = max(self.totals["n_tokens_max"], gen.prompt_tokens + len(gen.tokens))

    async def _answer(self, request: web.Request, kind: str, body: dict[str, Any], gen: Generation, prompt: str,
                      slot: Slot | None, prefill: str = "") -> web.StreamResponse:
        model = self.args.alias  # llama-server answers with its alias whatever the request names
        tpot = self.runtime.knobs.tpot_ms
        if body.get("stream"):
            inner = wire.LlamaStreamEvents(kind, model, gen, usage=include_usage(body), tpot_ms=tpot)
            return await stream_answer(request, self.runtime, gen.tokens, _CountingEvents(inner, slot),
                                       wire.SSE_CONTENT_TYPE)
        for i in range(len(gen.tokens)):
            await self.runtime.pace(i)
            if slot is not None:
                slot.n_decoded += 1
        if kind == "chat":
            payload = wire.chat_body(model, gen, tpot, prefill)
        else:
            payload = wire.completion_body(model, gen, (prompt if body.get("echo") else "") + gen.text, tpot)
        return await whole_answer(request, self.runtime, payload, wire.JSON_CONTENT_TYPE)


def build_app(runtime: EmulatorRuntime, args: ServerArgs | None = None) -> web.Application:
    """The emulator as an aiohttp application (tests may run it in-process)."""
    app = web.Application()
    app.add_routes(LlamaCppEmulator(runtime, args or ServerArgs()).routes() + control_routes(runtime))
    return app
