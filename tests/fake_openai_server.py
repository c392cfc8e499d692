"""A controllable OpenAI-compatible upstream for gateway tests.

A raw asyncio HTTP/1.1 server (no framework between the test and the bytes) running on its
own event loop in a background thread, so sync and async tests can both drive it and the
test keeps full control of when headers, chunks, cuts and errors go out.

Behaviour is chosen per request by the body's `model` field: the gateway rewrites `model` to
the backend's configured model, so one server can play many backends, each configured with
its own `Scenario` (`server.configure("slow", delay_before_headers_s=10)`). Unknown models
get the default scenario: a normal, fast answer.

Knobs (see `Scenario`): delay before the response headers, delay before the first chunk,
holding a stream after N chunks until the test releases it, cutting a stream after N chunks
without `[DONE]` (closing the connection mid-body, or ending the body cleanly), sending an
error event mid-stream (llama.cpp's `error: {...}` or `data: {"error": ...}`), writing the
last chunks and the stream's end in a single write (one TCP segment), and answering
with any HTTP status and error body. Every wait is cut short by `scenario.release` or by the
server stopping, so a test never leaves a handler sleeping behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_ERROR_BODY: dict[str, Any] = {
    "error": {"message": "fake upstream error", "type": "invalid_request_error", "param": None, "code": None}
}

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large", 422: "Unprocessable Entity",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class Scenario:
    """How the fake answers requests for one model name. Counters and events are filled in as it runs."""

    content: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    status: int = 200
    error_body: dict[str, Any] | bytes | None = None  # body of a non-200 answer (default: OpenAI error shape)
    delay_before_headers_s: float = 0.0
    delay_before_first_chunk_s: float = 0.0  # streams: headers go out at once, then silence
    delay_between_chunks_s: float = 0.0
    hold_after: int | None = None  # streams: after N content chunks, wait for `release` (or hold_timeout_s)
    hold_timeout_s: float = 30.0
    cut_after: int | None = None  # streams: after N content chunks, stop without [DONE]
    cut_mode: Literal["abort", "eof"] = "abort"  # abort: close mid chunked body; eof: end the body cleanly
    error_event_after: int | None = None  # streams: after N content chunks, send an error event and end
    error_event_format: Literal["error", "data"] = "error"  # `error: {...}` (llama.cpp) or `data: {"error":...}`
    error_event_message: str = "fake upstream failed mid-stream"
    coalesce_from: int | None = None  # streams: chunks from index N on go out in one write with the end
    raw_body: bytes | None = None  # non-streams: answer 200 with exactly these bytes instead of a completion
    finish_reason: str = "stop"

    # Filled in by the server.
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    headers_sent: threading.Event = field(default_factory=threading.Event)
    first_chunk_sent: threading.Event = field(default_factory=threading.Event)
    # Each flag is set just before its bytes are written, so once the test has seen the bytes, the flag is set.
    last_chunk_sent: threading.Event = field(default_factory=threading.Event)  # the stream's end is going out
    client_disconnected: threading.Event = field(default_factory=threading.Event)  # peer closed during a hold
    chunks_sent: int = 0

    def error_payload(self) -> bytes:
        body = DEFAULT_ERROR_BODY if self.error_body is None else self.error_body
        return body if isinstance(body, bytes) else json.dumps(body).encode()


class _Request:
    __slots__ = ("body", "headers", "json", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        try:
            self.json: Any = json.loads(body) if body else None
        except ValueError:
            self.json = None


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunked-encoding frame."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class FakeOpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 whose answers each test scripts."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.scenarios: dict[str, Scenario] = {}
        self.default = Scenario()
        self.health_status = 200
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    # -- control (called from the test's thread) ------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def configure(self, model: str, **knobs: Any) -> Scenario:
        """Replace `model`'s scenario with a fresh one; frees any handler still waiting on the old one."""
        old = self.scenarios.get(model)
        if old is not None:
            old.release.set()
        scenario = Scenario(**knobs)
        self.scenarios[model] = scenario
        return scenario

    def scenario(self, model: str) -> Scenario:
        return self.scenarios.get(model, self.default)

    def start(self, timeout: float = 10.0) -> FakeOpenAIServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as err:
                failure.append(err)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-openai-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("fake OpenAI server did not start")
        if failure:
            raise RuntimeError(f"fake OpenAI server failed to start: {failure[0]!r}") from failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        for scenario in [self.default, *self.scenarios.values()]:
            scenario.release.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- server (runs on the fake's own loop) ---------------------------------------------------

    async def _open(self) -> None:
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        assert self._stopping is not None and self._server is not None
        self._stopping.set()
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _wait(self, scenario: Scenario, seconds: float, reader: asyncio.StreamReader | None = None) -> None:
        """Sleep up to `seconds`, ending early on release, server stop, or (with `reader`) the peer leaving."""
        assert self._stopping is not None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not scenario.release.is_set() and not self._stopping.is_set():
            if reader is not None and reader.at_eof():
                scenario.client_disconnected.set()
                return
            await asyncio.sleep(0.01)

    async def _read_request(self, reader: asyncio.StreamReader) -> _Request | None:
        line = await reader.readline()
        if not line:
            return None
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            key, _, value = raw.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    await reader.readline()
                    break
                parts.append(await reader.readexactly(size))
                await reader.readline()
            body = b"".join(parts)
        return _Request(method, target.split("?", 1)[0], headers, body)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    break
                keep_alive = await self._dispatch(request, reader, writer)
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:
            # Only at shutdown; ending quietly keeps asyncio from logging each connection's cancellation.
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes,
                    content_type: str = "application/json") -> None:
        writer.write(_head(status, [("content-type", content_type), ("content-length", str(len(body)))]) + body)
        await writer.drain()

    async def _dispatch(self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must not be reused."""
        if request.method == "GET" and request.path == "/health":
            await self._send(writer, self.health_status, b'{"status":"ok"}')
            return True
        if request.method == "GET" and request.path == "/v1/models":
            models = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.scenarios]
            await self._send(writer, 200, json.dumps({"object": "list", "data": models}).encode())
            return True
        if request.method != "POST" or request.path not in ("/v1/chat/completions", "/v1/completions"):
            await self._send(writer, 404, json.dumps({"error": {"message": "not found", "type": "not_found"}}).encode())
            return True
        body = request.json if isinstance(request.json, dict) else {}
        model = str(body.get("model", ""))
        scenario = self.scenario(model)
        scenario.requests.append({"path": request.path, "headers": request.headers, "body": body})
        kind = "chat" if request.path.endswith("/chat/completions") else "completion"

        if scenario.delay_before_headers_s:
            await self._wait(scenario, scenario.delay_before_headers_s, reader)
        if scenario.status != 200:
            scenario.headers_sent.set()
            scenario.last_chunk_sent.set()
            await self._send(writer, scenario.status, scenario.error_payload())
            return True
        if body.get("stream"):
            return await self._stream(scenario, kind, model, body, reader, writer)
        scenario.headers_sent.set()
        scenario.last_chunk_sent.set()
        if scenario.raw_body is not None:
            await self._send(writer, 200, scenario.raw_body, content_type="text/html")
            return True
        await self._send(writer, 200, json.dumps(self._full_response(scenario, kind, model)).encode())
        return True

    @staticmethod
    def _usage(scenario: Scenario) -> dict[str, int]:
        completion = len(scenario.content)
        return {"prompt_tokens": 7, "completion_tokens": completion, "total_tokens": 7 + completion}

    def _full_response(self, scenario: Scenario, kind: str, model: str) -> dict[str, Any]:
        text = "".join(scenario.content)
        if kind == "chat":
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": scenario.finish_reason, "logprobs": None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": scenario.finish_reason, "logprobs": None}
            obj = "text_completion"
        return {"id": "fake-1", "object": obj, "created": int(time.time()), "model": model,
                "choices": [choice], "usage": self._usage(scenario)}

    def _chunk_event(self, kind: str, model: str, piece: str | None, index: int, finish: str | None) -> bytes:
        if kind == "chat":
            delta: dict[str, Any] = {} if piece is None else {"content": piece}
            if index == 0 and piece is not None:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": finish}
            obj = "text_completion"
        return _sse({"id": "fake-1", "object": obj, "created": int(time.time()), "model": model, "choices": [choice]})

    async def _stream(self, scenario: Scenario, kind: str, model: str, body: dict[str, Any],
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(_head(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache"),
                                 ("transfer-encoding", "chunked")]))
        scenario.headers_sent.set()
        await writer.drain()
        if scenario.delay_before_first_chunk_s:
            await self._wait(scenario, scenario.delay_before_first_chunk_s, reader)

        pending = b""  # with `coalesce_from`: chunks kept back to go out in one write with the stream's end
        n = len(scenario.content)
        for index in range(n + 1):
            if scenario.hold_after is not None and index == scenario.hold_after:
                await self._wait(scenario, scenario.hold_timeout_s, reader)
                if scenario.client_disconnected.is_set():
                    return False
            if scenario.cut_after is not None and index == min(scenario.cut_after, n):
                return await self._cut(scenario, writer, pending)
            if scenario.error_event_after is not None and index == min(scenario.error_event_after, n):
                return await self._error_event(scenario, writer, pending)
            if index == n:
                break
            if index and scenario.delay_between_chunks_s:
                await self._wait(scenario, scenario.delay_between_chunks_s, reader)
            frame = _chunk(self._chunk_event(kind, model, scenario.content[index], index, None))
            scenario.chunks_sent += 1
            if scenario.coalesce_from is not None and index >= scenario.coalesce_from:
                pending += frame
                continue
            # Events are set before the bytes leave, so the test never sees data its flag does not cover yet.
            scenario.first_chunk_sent.set()
            writer.write(frame)
            await writer.drain()

        tail = self._chunk_event(kind, model, None, n, scenario.finish_reason)
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            tail += _sse({"id": "fake-1", "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                          "created": int(time.time()), "model": model, "choices": [],
                          "usage": self._usage(scenario)})
        tail += b"data: [DONE]\n\n"
        scenario.first_chunk_sent.set()
        scenario.last_chunk_sent.set()
        writer.write(pending + _chunk(tail) + b"0\r\n\r\n")
        await writer.drain()
        return True

    async def _cut(self, scenario: Scenario, writer: asyncio.StreamWriter, pending: bytes) -> bool:
        # "eof": a well-formed end of the chunked body, but no [DONE]; "abort": the body is left unterminated.
        if pending:
            scenario.first_chunk_sent.set()
        scenario.last_chunk_sent.set()
        writer.write(pending + (b"0\r\n\r\n" if scenario.cut_mode == "eof" else b""))
        await writer.drain()
        return False  # close the connection

    async def _error_event(self, scenario: Scenario, writer: asyncio.StreamWriter, pending: bytes) -> bool:
        error = {"error": {"code": 500, "message": scenario.error_event_message, "type": "server_error"}}
        payload = json.dumps(error).encode()
        event = (b"error: " if scenario.error_event_format == "error" else b"data: ") + payload + b"\n\n"
        if pending:
            scenario.first_chunk_sent.set()
        scenario.last_chunk_sent.set()
        writer.write(pending + _chunk(event) + b"0\r\n\r\n")
        await writer.drain()
        return True
