"""The emulated TGI router: its routes on aiohttp.web, with the shared knobs and faults.

Routes and behaviour follow router/src/server.rs of huggingface/text-generation-inference:
`POST /generate`, `/generate_stream`, `/` (compat: either, by `stream`), `/v1/chat/completions`,
`/tokenize`, `/chat_tokenize`; `GET /health` (200, empty body), `/info`, `/metrics`, `/v1/models`.

Streams always answer 200: TGI reports validation, overload and generation errors as an SSE
event (`data:{"error":...,"error_type":...}` on `/generate_stream`, `data:{"error":{"message":
...,"http_status_code":422}}` then `data:[DONE]` on the Messages API). Overload is TGI's: a
request beyond `max_concurrent_requests` is refused at once with 429 `overloaded` (the router
`try_acquire`s a semaphore permit, infer/mod.rs); here that limit is `max_concurrency` (the
running batch) + `max_queue` (waiting for it). The fault knobs are the emulator's own: `http_*`
answer that status with TGI's error body before any SSE (what a proxy in front would do too;
`http_429` adds Retry-After, which TGI itself never sends); `stream_error` is TGI's own report of
a failed generation (`InferError::GenerationError`): an error event mid-stream, a 424 otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from plugins.emulation import EmulatorRuntime, Fault, QueueFull
from plugins.emulation.runtime import control_routes, refuse
from plugins.tgi.emulator import bodies
from plugins.tgi.emulator import tokens as tok
from plugins.tgi.emulator.requests import (
    ChatRequest,
    CompatGenerateRequest,
    GenerateRequest,
    Parameters,
    Rejected,
    decode,
)
from plugins.tgi.emulator.server_info import ServerState
from plugins.tgi.emulator.validation import (
    ToolError,
    ValidationFailure,
    chat_parameters,
    stream_refusal,
    validate,
)

T = TypeVar("T")
_encode = msgspec.json.encode
_OVERLOADED = "Model is overloaded"
# `InferError::GenerationError` as a shard reports it (e.g. a CUDA error), for the stream_error fault
_GENERATION_FAILED = "Request failed during generation: emulator fault: the shard failed"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encode(body), status=status, content_type="application/json", headers=headers)


def _event(body: Any) -> bytes:
    """axum's `Event::json_data` framing: no space after `data:`."""
    return b"data:" + _encode(body) + b"\n\n"


class TGIEmulator:
    """Request handlers sharing one runtime (knobs, slots) and one server state."""

    def __init__(self, runtime: EmulatorRuntime, state: ServerState) -> None:
        self.runtime = runtime
        self.state = state

    # -- plumbing ---------------------------------------------------------------------------

    async def _gate(self, request: web.Request) -> web.StreamResponse | None:
        """The faults that strike before TGI's handler would run."""
        knobs = self.runtime.knobs
        if knobs.fault is Fault.REFUSE:
            refuse(request)
        if knobs.fault is Fault.HTTP_500:
            return _json(bodies.error("Incomplete generation", "incomplete_generation"), 500)
        if knobs.fault is Fault.HTTP_503:
            return _json(bodies.error("unhealthy", "healthcheck"), 503)
        if knobs.fault is Fault.HTTP_429:
            return _json(bodies.error(_OVERLOADED, "overloaded"), 429, {"Retry-After": str(knobs.retry_after_s)})
        await self.runtime.hang_if_asked()
        return None

    async def _enter(self, request: web.Request, route: str, kind: type[T]) -> T | web.StreamResponse:
        raw = await request.read()
        self.state.requests[route] += 1
        early = await self._gate(request)
        if early is not None:
            return early
        try:
            return decode(request, raw, kind)
        except Rejected as rejected:
            return rejected.response

    def _fail(self, err: str) -> None:
        self.state.failures[err] += 1

    def _generation_error_at(self) -> int | None:
        """Token index of the `stream_error` fault: TGI's own report of a failed generation."""
        knobs = self.runtime.knobs
        return knobs.fault_after_tokens if knobs.fault.value == "stream_error" else None

    def _headers(self, run: bodies.Run, started: float, characters: int) -> dict[str, str]:
        """The timing and count headers `generate_internal` sets."""
        total_ms = int((time.monotonic() - started) * 1000)
        per_token = total_ms // max(len(run.tokens), 1)
        return {
            "x-compute-type": "gpu+optimized", "x-compute-time": f"{total_ms / 1000}",
            "x-compute-characters": str(characters), "x-total-time": str(total_ms), "x-validation-time": "0",
            "x-queue-time": "0", "x-inference-time": str(total_ms), "x-time-per-token": str(per_token),
            "x-prompt-tokens": str(run.input_length), "x-generated-tokens": str(len(run.tokens)),
        }

    def _run(self, p: Parameters, prompt: str, input_length: int, sampling: bool, prefill: str = "") -> bodies.Run:
        return bodies.generate(
            self.runtime.model, self.runtime.knobs.reply.split(), prompt=prompt, input_length=input_length,
            max_new_tokens=p.max_new_tokens, stop=p.stop, top_n=p.top_n_tokens or 0, sampling=sampling,
            seed=p.seed, prefill=prefill,
        )

    async def _paced(self, run: bodies.Run) -> None:
        for i in range(len(run.tokens)):
            await self.runtime.pace(i)

    async def _broken(self, request: web.Request, body: bytes) -> web.StreamResponse | None:
        """A non-streaming answer under a mid-stream fault: cut, cut in half, or TGI's 424."""
        if self._generation_error_at() is not None:
            self._fail("generation")
            return _json(bodies.error(_GENERATION_FAILED, "generation"), 424)
        if self.runtime.cut_at() is None:
            return None
        if self.runtime.knobs.fault is Fault.CUT_STREAM:
            refuse(request)
        return web.Response(body=body[: len(body) // 2], content_type="application/json")

    # -- /generate and / --------------------------------------------------------------------

    async def generate(self, request: web.Request) -> web.StreamResponse:
        req = await self._enter(request, "/generate", GenerateRequest)
        if isinstance(req, web.StreamResponse):
            return req
        return await self._generate(request, req, compat=False)

    async def compat(self, request: web.Request) -> web.StreamResponse:
        req = await self._enter(request, "/", CompatGenerateRequest)
        if isinstance(req, web.StreamResponse):
            return req
        if req.parameters.return_full_text is None:
            req.parameters.return_full_text = True  # `compat_return_full_text` for a text-generation model
        if req.stream:
            return await self._generate_stream(request, req)
        return await self._generate(request, req, compat=True)

    async def _generate(self, request: web.Request, req: GenerateRequest, *, compat: bool) -> web.StreamResponse:
        started = time.monotonic()
        self.state.request_count += 1
        p = req.parameters
        try:
            valid = validate(p, req.inputs, tok.count(req.inputs), self.state.limits)
        except ValidationFailure as err:
            self._fail("validation")
            return _json(bodies.error(f"Input validation error: {err}", "validation"), 422)
        try:
            async with self.runtime.slot():
                best_of = p.best_of or 1
                runs = [self._run(p, req.inputs, valid.input_length, valid.sampling) for _ in range(best_of)]
                await self._paced(runs[0])
        except QueueFull:
            self._fail("overloaded")
            return _json(bodies.error(_OVERLOADED, "overloaded"), 429)
        prefill = bodies.prefill_tokens(req.inputs) \
            if p.decoder_input_details and self.state.enable_prefill_logprobs else []
        body = bodies.generate_response(runs[0], with_details=p.details or p.decoder_input_details, prefill=prefill,
                                        full_text=bool(p.return_full_text), best_of=runs if best_of > 1 else None)
        encoded = _encode([body] if compat else body)  # compat wraps it in a list "to match api-inference"
        broken = await self._broken(request, encoded)
        if broken is not None:
            return broken
        self.state.request_success += 1
        headers = self._headers(runs[0], started, len(req.inputs))
        return web.Response(body=encoded, content_type="application/json", headers=headers)

    # -- /generate_stream -------------------------------------------------------------------

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        req = await self._enter(request, "/generate_stream", GenerateRequest)
        if isinstance(req, web.StreamResponse):
            return req
        return await self._generate_stream(request, req)

    async def _sse(self, request: web.Request, characters: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={**_SSE_HEADERS, "x-compute-type": "gpu+optimized",
                                               "x-compute-characters": str(characters)})
        await response.prepare(request)
        return response

    async def _sse_error(self, request: web.Request, characters: int, body: Any, *,
                         done: bool = False) -> web.StreamResponse:
        response = await self._sse(request, characters)
        await response.write(_event(body) + (b"data:[DONE]\n\n" if done else b""))
        await response.write_eof()
        return response

    async def _generate_stream(self, request: web.Request, req: GenerateRequest) -> web.StreamResponse:
        self.state.request_count += 1
        p, characters = req.parameters, len(req.inputs)
        refusal = stream_refusal(p)
        try:
            if refusal is not None:
                raise ValidationFailure(refusal)
            valid = validate(p, req.inputs, tok.count(req.inputs), self.state.limits)
        except ValidationFailure as err:
            self._fail("validation")
            return await self._sse_error(request, characters,
                                         bodies.error(f"Input validation error: {err}", "validation"))
        run = self._run(p, req.inputs, valid.input_length, valid.sampling)

        def event(i: int) -> bytes:
            return _event(bodies.stream_event(run, i, with_details=p.details, full_text=bool(p.return_full_text)))

        return await self._stream_tokens(request, characters, run, event, done=False,
                                         overloaded=bodies.error(_OVERLOADED, "overloaded"),
                                         failed=bodies.error(_GENERATION_FAILED, "generation"))

    async def _stream_tokens(self, request: web.Request, characters: int, run: bodies.Run,
                             event: Callable[[int], bytes], *, done: bool, overloaded: Any, failed: Any,
                             after: Callable[[], bytes] | None = None) -> web.StreamResponse:
        """Send one event per token, paced, with the mid-stream faults; `[DONE]` if the route has one."""
        try:
            async with self.runtime.slot():
                response = await self._sse(request, characters)
                cut = self.runtime.cut_at()
                fail_at = self._generation_error_at()
                for i in range(len(run.tokens)):
                    await self.runtime.pace(i)
                    if fail_at is not None and i == fail_at:
                        self._fail("generation")
                        await response.write(_event(failed) + (b"data:[DONE]\n\n" if done else b""))
                        await response.write_eof()
                        return response
                    if cut is not None and i == cut:
                        if self.runtime.knobs.fault is Fault.CUT_STREAM:
                            refuse(request)
                        await response.write(b'data:{"index":' + str(i + 1).encode() + b',"token":{"id":\n\n')
                        await response.write_eof()
                        return response
                    await response.write(event(i))
                tail = (after() if after is not None else b"") + (b"data:[DONE]\n\n" if done else b"")
                if tail:
                    await response.write(tail)
                await response.write_eof()
        except QueueFull:
            self._fail("overloaded")
            return await self._sse_error(request, characters, overloaded, done=done)
        self.state.request_success += 1
        return response

    # -- the Messages API -------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        chat = await self._enter(request, "/v1/chat/completions", ChatRequest)
        if isinstance(chat, web.StreamResponse):
            return chat
        self.state.request_count += 1
        try:
            p = chat_parameters(chat)
        except ToolError as err:
            self._fail("validation")
            return _json(bodies.error(f"Tool error: {err}", "tool_error"), 422)
        prompt = tok.chat_template(chat.messages)
        model = chat.model if chat.model not in (None, "tgi") else self.state.model_id
        logprobs = bool(chat.logprobs)
        fingerprint = self.state.fingerprint
        try:
            valid = validate(p, prompt, tok.count(prompt), self.state.limits)
        except ValidationFailure as err:
            self._fail("validation")
            if chat.stream:
                return await self._sse_error(request, len(prompt),
                                             bodies.chat_error_event(f"Input validation error: {err}"), done=True)
            return _json(bodies.error(f"Input validation error: {err}", "validation"), 422)
        prefill = (tok.assistant_prefill(chat.messages) or "").rstrip()  # trimmed with the render
        run = self._run(p, prompt, valid.input_length, valid.sampling, prefill)
        if chat.stream:
            def event(i: int) -> bytes:
                return _event(bodies.chat_chunk(run, i, model=model, fingerprint=fingerprint, logprobs=logprobs))

            def usage() -> bytes:
                if not chat.stream_options.include_usage:
                    return b""
                return _event(bodies.chat_usage_chunk(run, model=model, fingerprint=fingerprint))

            return await self._stream_tokens(request, len(prompt), run, event, done=True,
                                             overloaded=bodies.chat_error_event(_OVERLOADED),
                                             failed=bodies.chat_error_event(_GENERATION_FAILED), after=usage)
        started = time.monotonic()
        try:
            async with self.runtime.slot():
                await self._paced(run)
        except QueueFull:
            self._fail("overloaded")
            return _json(bodies.error(_OVERLOADED, "overloaded"), 429)
        encoded = _encode(bodies.chat_completion(run, model=model, fingerprint=fingerprint, logprobs=logprobs))
        broken = await self._broken(request, encoded)
        if broken is not None:
            return broken
        self.state.request_success += 1
        return web.Response(body=encoded, content_type="application/json",
                            headers=self._headers(run, started, len(prompt)))

    # -- tokenizer, health, info, metrics ---------------------------------------------------

    async def tokenize(self, request: web.Request) -> web.StreamResponse:
        req = await self._enter_plain(request, "/tokenize", GenerateRequest)
        if isinstance(req, web.StreamResponse):
            return req
        found = tok.tokenize(req.inputs)
        truncate = req.parameters.truncate
        return _json(found[-truncate:] if truncate else found)

    async def chat_tokenize(self, request: web.Request) -> web.StreamResponse:
        chat = await self._enter_plain(request, "/chat_tokenize", ChatRequest)
        if isinstance(chat, web.StreamResponse):
            return chat
        self.state.request_count += 1  # get_chat_tokenize counts itself as a request
        prompt = tok.chat_template(chat.messages)
        return _json({"tokenize_response": tok.tokenize(prompt), "templated_text": prompt})

    async def _enter_plain(self, request: web.Request, route: str, kind: type[T]) -> T | web.StreamResponse:
        """Like `_enter` without faults: they are aimed at generation, not at the tokenizer."""
        raw = await request.read()
        self.state.requests[route] += 1
        try:
            return decode(request, raw, kind)
        except Rejected as rejected:
            return rejected.response

    async def health(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)  # axum's `()`: 200 with an empty body

    async def info(self, _request: web.Request) -> web.StreamResponse:
        return _json(self.state.info())

    async def models(self, _request: web.Request) -> web.StreamResponse:
        model = self.state.model_id
        return _json({"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": model}]})

    async def metrics(self, _request: web.Request) -> web.StreamResponse:
        text = self.state.metrics(queue_size=self.runtime.waiting, batch_size=self.runtime.running)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def requests_seen(self, _request: web.Request) -> web.StreamResponse:
        """Emulator only: how many requests each route received (a test can prove none was sent)."""
        return _json(dict(self.state.requests))

    def routes(self) -> list[web.RouteDef]:
        handlers: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("POST", "/", self.compat), ("POST", "/generate", self.generate),
            ("POST", "/generate_stream", self.generate_stream), ("POST", "/v1/chat/completions", self.chat),
            ("POST", "/tokenize", self.tokenize), ("POST", "/chat_tokenize", self.chat_tokenize),
            ("GET", "/", self.health), ("GET", "/health", self.health), ("GET", "/ping", self.health),
            ("GET", "/info", self.info), ("GET", "/metrics", self.metrics), ("GET", "/v1/models", self.models),
            ("GET", "/__emulator/requests", self.requests_seen),
        ]
        return [web.route(method, path, handler) for method, path, handler in handlers]


def build_app(runtime: EmulatorRuntime, state: ServerState) -> web.Application:
    """The aiohttp application of one emulated TGI server."""
    emulator = TGIEmulator(runtime, state)
    app = web.Application(client_max_size=2 * 1024 * 1024)  # TGI's default --payload-limit: 2 MB
    app.add_routes([*emulator.routes(), *control_routes(runtime)])
    return app
