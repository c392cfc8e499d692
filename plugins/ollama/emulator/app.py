"""The emulator's routes: Ollama's native API on aiohttp.web.

Routes, status codes and messages follow ollama/ollama server/routes.go (commit fb30760):
`GET /` "Ollama is running", `GET /api/version`, `GET /api/tags`, `GET /api/ps`,
`POST /api/chat`, `POST /api/generate`, `POST /api/embed`; a model that is not pulled is
404 `{"error": "model 'x' not found"}` (GenerateHandler, ChatHandler, EmbedHandler), and
an unknown path is gin's plain-text "404 page not found".
"""

from __future__ import annotations

import collections
import random
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from plugins.emulation import EmulatorRuntime, Knobs, QueueFull
from plugins.emulation.model import count_tokens
from plugins.emulation.runtime import control_routes
from plugins.ollama.emulator import answer as out
from plugins.ollama.emulator.catalog import DEFAULT_KEEP_ALIVE_S, Catalog
from plugins.ollama.emulator.fake import Answer, embedding, json_answer, text_answer, tool_answer
from plugins.ollama.emulator.faults import SERVER_BUSY, before_answer, error_response
from plugins.ollama.emulator.requests import (
    BadRequest,
    ChatRequestIn,
    EmbedRequestIn,
    GenerateRequestIn,
    check_options,
    decode,
    keep_alive,
)
from plugins.ollama.emulator.wire import ChatResponse, EmbedResponse, GenerateResponse, Message

DEFAULT_VERSION = "0.32.15"  # the newest release tag of ollama/ollama when this emulator was written

# llm/llama_server.go: what the runner answers when a prompt does not fit and context shift is off.
PROMPT_TOO_LONG = ("the prompt is longer than the context length currently available to the model; shorten the "
                   "prompt, adjust the context length in settings, or use a model with a longer context length")
# server/routes.go EmbedHandler, `truncate: false` and an input over the context length.
INPUT_TOO_LONG = "the input length exceeds the context length"


def _not_found(requested: str) -> BadRequest:
    return BadRequest(404, f"model '{requested}' not found")


def _check_format(value: Any) -> None:
    """llm/llama_server.go: `format` is "json", a JSON Schema object, or unset; anything else fails the run (500)."""
    if value in (None, "", "json") or isinstance(value, dict):
        return
    raw = msgspec.json.encode(value).decode()
    quoted = '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'  # Go's %q of the raw bytes
    raise BadRequest(500, f'invalid format: {quoted}; expected "json" or a valid JSON Schema object')


class OllamaEmulator:
    """One emulated Ollama server: its knobs, its models, and the last requests it received."""

    def __init__(self, knobs: Knobs | None = None, *, models: list[str] | None = None,
                 num_ctx: int = 4096, version: str = DEFAULT_VERSION) -> None:
        self.runtime = EmulatorRuntime(knobs)
        self.catalog = Catalog(models or ["llama3.2", "all-minilm"], default_num_ctx=num_ctx)
        self.version = version
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=64)
        self._rng = random.Random(0)

    # -- shared steps ---------------------------------------------------------------------

    async def _read(self, request: web.Request, kind: type[msgspec.Struct]) -> Any:
        body = await request.read()
        try:
            raw = msgspec.json.decode(body) if body.strip() else None
        except msgspec.DecodeError:
            raw = body.decode("utf-8", "replace")
        self.requests.append({"path": request.path, "body": raw})
        return decode(body, kind)

    def _options(self, options: dict[str, Any] | None) -> tuple[int | None, list[str] | None, int | None]:
        """(num_predict, stop, num_ctx) after Options.FromMap's type checks."""
        check_options(options)
        options = options or {}
        num_predict = options.get("num_predict")
        num_ctx = options.get("num_ctx")
        stop = options.get("stop")
        return (int(num_predict) if num_predict is not None else None, stop,
                int(num_ctx) if num_ctx is not None else None)

    def _fits(self, prompt: str, num_ctx: int | None, shift: bool | None) -> None:
        # With context shift on (the default) Ollama truncates; with `shift: false` it refuses.
        if shift is False and count_tokens(prompt) > (num_ctx or self.catalog.default_num_ctx):
            raise BadRequest(400, PROMPT_TOO_LONG)

    async def _serve(self, request: web.Request, model: str, num_ctx: int | None, keep_s: float,
                     produce: Callable[[out.Timing], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Faults, a slot, the model loaded for the request and released after it."""
        faulted = await before_answer(request, self.runtime)
        if faulted is not None:
            return faulted
        try:
            async with self.runtime.slot():
                timing = out.Timing(self.catalog.use(model, num_ctx, keep_s))
                timing.loaded()
                try:
                    return await produce(timing)
                finally:
                    self.catalog.release(model, keep_s)
        except QueueFull:
            return error_response(503, SERVER_BUSY)

    # -- inference routes -----------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            req: ChatRequestIn = await self._read(request, ChatRequestIn)
            if not req.model:
                raise BadRequest(400, "model is required")
            name = self.catalog.find(req.model)
            if name is None:
                raise _not_found(req.model)
            keep_s = keep_alive(req.keep_alive, DEFAULT_KEEP_ALIVE_S)
            if not req.messages and keep_s == 0:
                self.catalog.unload(name)
                return out.json_response(self._chat_done(req.model, "", None, "unload", {}))
            num_predict, stop, num_ctx = self._options(req.options)
            _check_format(req.format)
            prompt = "\n".join(m.content for m in req.messages)
            self._fits(prompt, num_ctx, req.shift)
        except BadRequest as err:
            return error_response(err.status, err.message)

        async def produce(timing: out.Timing) -> web.StreamResponse:
            if not req.messages:
                return out.json_response(self._chat_done(req.model, "", None, "load", {}))
            last_user = next((m.content for m in reversed(req.messages) if m.role == "user"), "")
            answer: Answer | None = None
            if req.tools and req.messages[-1].role == "user":
                answer = tool_answer(req.tools, prompt, last_user, self._rng)
            if answer is None and req.format not in (None, ""):
                answer = json_answer(self.runtime.model, prompt, req.format)
            if answer is None:
                # A final assistant message is a prefill (ChatHandler's "chat prefill"; the renderers and
                # the library's templates leave that turn open): the model continues it.
                prefill = req.messages[-1].content if req.messages[-1].role == "assistant" else ""
                answer = text_answer(self.runtime.model, prompt, num_predict, stop, prefill)

            def chunk(piece: str, tool_calls: Any) -> ChatResponse:
                return ChatResponse(model=req.model, created_at=out.now(),
                                    message=Message(role="assistant", content=piece, tool_calls=tool_calls),
                                    done=False)

            def final(text: str, tool_calls: Any, reason: str, metrics: dict[str, int]) -> ChatResponse:
                return self._chat_done(req.model, text, tool_calls, reason, metrics)

            if req.stream is False:
                return await out.whole(request, self.runtime, answer, timing, final)
            return await out.stream(request, self.runtime, answer, timing, chunk, final)

        return await self._serve(request, name, num_ctx, keep_s, produce)

    @staticmethod
    def _chat_done(model: str, text: str, tool_calls: Any, reason: str, metrics: dict[str, int]) -> ChatResponse:
        return ChatResponse(model=model, created_at=out.now(),
                            message=Message(role="assistant", content=text, tool_calls=tool_calls),
                            done=True, done_reason=reason, **metrics)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        try:
            req: GenerateRequestIn = await self._read(request, GenerateRequestIn)
            name = self.catalog.find(req.model)
            if name is None:
                raise _not_found(req.model)
            keep_s = keep_alive(req.keep_alive, DEFAULT_KEEP_ALIVE_S)
            if not req.prompt and keep_s == 0:
                self.catalog.unload(name)
                return out.json_response(GenerateResponse(model=req.model, created_at=out.now(), response="",
                                                          done=True, done_reason="unload"))
            if req.raw and (req.template or req.system or req.context):
                raise BadRequest(400, "raw mode does not support template, system, or context")
            num_predict, stop, num_ctx = self._options(req.options)
            _check_format(req.format)
            self._fits(req.prompt, num_ctx, req.shift)
        except BadRequest as err:
            return error_response(err.status, err.message)

        async def produce(timing: out.Timing) -> web.StreamResponse:
            if not req.prompt:
                return out.json_response(GenerateResponse(model=req.model, created_at=out.now(), response="",
                                                          done=True, done_reason="load"))
            if req.format not in (None, ""):
                answer = json_answer(self.runtime.model, req.prompt, req.format)
            else:
                answer = text_answer(self.runtime.model, req.prompt, num_predict, stop)

            def chunk(piece: str, _tool_calls: Any) -> GenerateResponse:
                return GenerateResponse(model=req.model, created_at=out.now(), response=piece, done=False)

            def final(text: str, _tool_calls: Any, reason: str, metrics: dict[str, int]) -> GenerateResponse:
                # `context` is the prompt and reply as tokens; raw mode returns none (docs/api.md "Raw Mode").
                context = None if req.raw else list(range(1, answer.prompt_tokens + answer.eval_tokens + 1))
                return GenerateResponse(model=req.model, created_at=out.now(), response=text, done=True,
                                        done_reason=reason, context=context, **metrics)

            if req.stream is False:
                return await out.whole(request, self.runtime, answer, timing, final)
            return await out.stream(request, self.runtime, answer, timing, chunk, final)

        return await self._serve(request, name, num_ctx, keep_s, produce)

    async def embed(self, request: web.Request) -> web.StreamResponse:
        try:
            req: EmbedRequestIn = await self._read(request, EmbedRequestIn)
            name = self.catalog.find(req.model)
            if name is None:
                raise _not_found(req.model)
            if isinstance(req.input, str):
                inputs = [req.input] if req.input else []
            elif isinstance(req.input, list) and all(isinstance(i, str) for i in req.input):
                inputs = list(req.input)
            elif req.input is None:
                inputs = []
            else:
                raise BadRequest(400, "invalid input type")
            keep_s = keep_alive(req.keep_alive, DEFAULT_KEEP_ALIVE_S)
            _, _, num_ctx = self._options(req.options)
            limit = num_ctx or self.catalog.default_num_ctx
            if req.truncate is False and any(count_tokens(text) > limit for text in inputs):
                raise BadRequest(400, INPUT_TOO_LONG)
        except BadRequest as err:
            return error_response(err.status, err.message)

        async def produce(timing: out.Timing) -> web.StreamResponse:
            if not inputs:
                return out.json_response(EmbedResponse(model=req.model, embeddings=[]))
            vectors = [embedding(text, req.dimensions) for text in inputs]
            tokens = sum(max(count_tokens(text), 1) for text in inputs)
            metrics = timing.metrics(Answer([], "stop", tokens, 0))
            return out.json_response(EmbedResponse(
                model=req.model, embeddings=vectors, total_duration=metrics["total_duration"],
                load_duration=metrics["load_duration"], prompt_eval_count=tokens))

        return await self._serve(request, name, num_ctx, keep_s, produce)

    # -- control routes -------------------------------------------------------------------

    async def root(self, _request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")

    async def version_route(self, _request: web.Request) -> web.Response:
        return out.json_response({"version": self.version})

    async def tags(self, _request: web.Request) -> web.Response:
        return out.json_response(self.catalog.tags())

    async def ps(self, _request: web.Request) -> web.Response:
        return out.json_response(self.catalog.ps())

    async def recorded(self, _request: web.Request) -> web.Response:
        """`GET /__emulator/requests`: the bodies of the last inference requests, oldest first."""
        return web.json_response(list(self.requests))

    def app(self) -> web.Application:
        application = web.Application(middlewares=[_gin_not_found], client_max_size=64 * 1024 * 1024)
        application.add_routes([
            web.get("/", self.root), web.get("/api/version", self.version_route),
            web.get("/api/tags", self.tags), web.get("/api/ps", self.ps),
            web.post("/api/chat", self.chat), web.post("/api/generate", self.generate),
            web.post("/api/embed", self.embed), web.get("/__emulator/requests", self.recorded),
            *control_routes(self.runtime),
        ])
        return application


@web.middleware
async def _gin_not_found(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """gin's plain-text answers for an unknown path or method (server/routes.go sets HandleMethodNotAllowed)."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405, text="405 method not allowed", content_type="text/plain")
    except web.HTTPNotFound:
        return web.Response(status=404, text="404 page not found", content_type="text/plain")
