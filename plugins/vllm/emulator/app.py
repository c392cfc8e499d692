"""vLLM's OpenAI API server, emulated: /v1/chat/completions, /v1/completions, /v1/models, /health,
/tokenize, /detokenize and /metrics, on the shared emulator machinery (plugins/emulation).

/v1/completions also takes vLLM's token-id prompts (one list of ids, or a batch of them), answered by
token_completions.py: the input-grounded token model of token_model.py with GPU-like costs, the target
of the gateway's speculative-decoding tests and benchmark.
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
    new_id,
    stops,
    stream_answer,
    trailing_assistant,
    whole_answer,
)
from plugins.emulation.runtime import control_routes
from plugins.vllm.emulator import wire
from plugins.vllm.emulator.token_completions import TokenCompletions, knob_routes, token_prompts
from plugins.vllm.emulator.token_model import TokenKnobs


@dataclass(frozen=True)
class ServedModel:
    """What `vllm serve` was started with: --served-model-name, --model (the root) and --max-model-len."""

    name: str = "smollm2-hf"
    root: str = ".cache/models/smollm2-135m-instruct-hf"
    max_model_len: int = 2048
    kv_tokens: int = 16384  # the KV pool, in tokens, that kv_cache_usage_perc is a share of


class VLLMEmulator:
    """The routes over the fake model; running/waiting come from the runtime, KV use from held tokens."""

    def __init__(self, runtime: EmulatorRuntime, served: ServedModel, token_knobs: TokenKnobs | None = None) -> None:
        self.runtime = runtime
        self.served = served
        self.tokens = TokenCompletions(runtime, served.name, served.max_model_len, token_knobs or TokenKnobs())
        self.vocab = WordVocab(49152)
        self.kv_held = 0  # tokens of the requests now running (prompt + generated so far, rounded up to all)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self.chat), web.post("/v1/completions", self.completion),
            web.get("/v1/models", self.models), web.get("/health", self.health), web.get("/metrics", self.metrics),
            web.post("/tokenize", self.tokenize), web.post("/detokenize", self.detokenize),
        ]

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)  # recorded: 200 with an empty body

    async def models(self, _request: web.Request) -> web.Response:
        now = int(time.time())
        permission = {"id": new_id("modelperm", 16), "object": "model_permission", "created": now,
                      "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                      "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                      "organization": "*", "group": None, "is_blocking": False}
        card = {"id": self.served.name, "object": "model", "created": now, "owned_by": "vllm",
                "root": self.served.root, "parent": None, "max_model_len": self.served.max_model_len,
                "permission": [permission]}
        return json_response({"object": "list", "data": [card]})

    async def metrics(self, _request: web.Request) -> web.Response:
        usage = min(self.kv_held / self.served.kv_tokens, 1.0)
        page = wire.metrics_page(self.served.name, self.runtime.running, self.runtime.waiting, usage)
        return web.Response(text=page, headers={"Content-Type": "text/plain; version=1.0.0; charset=utf-8"})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        text = chat_prompt(body["messages"]) if "messages" in body else str(body.get("prompt", ""))
        tokens = self.vocab.encode(text)
        return json_response({"count": len(tokens), "max_model_len": self.served.max_model_len, "tokens": tokens,
                              "token_strs": None})

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        return json_response({"prompt": self.vocab.decode(list(body.get("tokens") or []))})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat")

    async def completion(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "completion")

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        body = await json_body(request)
        field = "messages" if kind == "chat" else "prompt"
        if field not in body:
            return wire.missing_field(field)
        model = str(body.get("model") or self.served.name)
        if model != self.served.name:
            return wire.unknown_model(model, self.served.name)
        if kind == "completion":
            batch = token_prompts(body["prompt"])
            if batch is not None:  # token ids: the token model, not the fixed text reply
                return await self.tokens.serve(request, body, batch)
        prompt = chat_prompt(body["messages"]) if kind == "chat" else completion_prompt(body["prompt"])
        prompt_tokens = count_tokens(prompt)
        limit = self.served.max_model_len
        if prompt_tokens >= limit:
            return wire.prompt_too_long(prompt_tokens, limit)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(max_tokens, int) and max_tokens > limit:
            return wire.max_tokens_too_large(max_tokens, limit)
        # Recorded: a prompt plus max_tokens past the limit is served, cut to what the context holds.
        max_tokens = min(max_tokens or limit, limit - prompt_tokens)
        failed = await fault_before_answer(request, self.runtime, wire.error_response)
        if failed is not None:
            return failed
        # continue_final_message: the last (assistant) message is left open and continued; without
        # it the template starts a new assistant turn after it.
        prefill = ""
        if kind == "chat" and body.get("continue_final_message") and not body.get("add_generation_prompt", True):
            prefill = trailing_assistant(body["messages"]) or ""
        try:
            async with self.runtime.slot():
                gen = generate(self.runtime, prompt, max_tokens, stops(body.get("stop")), prefill)
                held = prompt_tokens + len(gen.tokens)
                self.kv_held += held
                try:
                    return await self._answer(request, kind, body, gen, prompt)
                finally:
                    self.kv_held -= held
        except QueueFull:
            return wire.error_response(503, "emulated fault: request queue is full")

    async def _answer(self, request: web.Request, kind: str, body: dict[str, Any], gen: Generation,
                      prompt: str) -> web.StreamResponse:
        model = self.served.name
        if body.get("stream"):
            # vLLM's StreamOptions.include_usage defaults to true once stream_options is given.
            events = wire.VLLMStreamEvents(kind, model, gen, usage=include_usage(body, default_when_given=True))
            return await stream_answer(request, self.runtime, gen.tokens, events, wire.SSE_CONTENT_TYPE)
        for i in range(len(gen.tokens)):
            await self.runtime.pace(i)
        if kind == "chat":
            return await whole_answer(request, self.runtime, wire.chat_body(model, gen))
        text = (prompt if body.get("echo") else "") + gen.text
        return await whole_answer(request, self.runtime, wire.completion_body(model, gen, text))


def build_app(runtime: EmulatorRuntime, served: ServedModel | None = None,
              token_knobs: TokenKnobs | None = None) -> web.Application:
    """The emulator as an aiohttp application (tests may run it in-process)."""
    app = web.Application()
    emulator = VLLMEmulator(runtime, served or ServedModel(), token_knobs)
    # /__emulator/knobs is replaced by one that also reads and sets the token model's knobs.
    shared = [route for route in control_routes(runtime) if route.path != "/__emulator/knobs"]
    app.add_routes(emulator.routes() + shared + knob_routes(runtime, emulator.tokens))
    return app
