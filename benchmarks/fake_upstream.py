"""A fast fake OpenAI-compatible upstream for overhead benchmarks.

It is written on raw ``asyncio.Protocol`` + ``httptools`` + uvloop rather than
on a web framework so that the upstream costs as little CPU as possible: the
benchmark wants to measure the *gateway's* overhead, so everything around the
gateway (this server and the load generator) must be much faster than it.

Endpoints:

* ``POST /v1/chat/completions`` -- a small valid ``chat.completion`` JSON, or,
  when the request body has ``"stream": true``, an SSE stream of ``--chunks``
  ``chat.completion.chunk`` events sent with ``Transfer-Encoding: chunked``,
  followed by a usage chunk when ``stream_options.include_usage`` is true and
  by ``data: [DONE]``.
* ``GET /health`` and ``GET /v1/models`` -- 200 with a tiny JSON body.

Run standalone (handy while developing the gateway)::

    python benchmarks/fake_upstream.py --port 9000 --chunks 20

With ``--port 0`` the kernel picks a port; the chosen port is printed on
stdout as ``PORT <n>`` so a parent process can read it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from typing import Any, cast

import httptools
import msgspec
import uvloop

# Fixed timestamp/id: the content of the response does not matter for the
# benchmark, and constant bytes let us precompute (and cache) every response.
_CREATED = 1_700_000_000
_ID = "chatcmpl-fake0000000000000000"

_JSON_HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
_SSE_HEADERS = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"%s\r\n"
)
_CLOSE = b"Connection: close\r\n"

_encode = msgspec.json.encode
_decode = msgspec.json.decode


def _http_chunk(payload: bytes) -> bytes:
    """Frame ``payload`` as one HTTP/1.1 chunk (``Transfer-Encoding: chunked``)."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse(obj: Any) -> bytes:
    """Encode one SSE ``data:`` event."""
    return b"data: " + _encode(obj) + b"\n\n"


def build_completion(model: str) -> bytes:
    """Body of a non-streaming ``chat.completion`` response."""
    return _encode(
        {
            "id": _ID,
            "object": "chat.completion",
            "created": _CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
        }
    )


def build_stream_events(model: str, chunks: int, include_usage: bool) -> list[bytes]:
    """The SSE events of a streamed completion, each framed as an HTTP chunk.

    ``chunks`` counts the ``chat.completion.chunk`` events that carry a choice:
    the first also carries the assistant role, the last the finish reason.
    The usage event (optional) and ``[DONE]`` come after them, and the final
    element is the zero-length chunk that ends the chunked body.
    """
    chunks = max(1, chunks)
    events: list[bytes] = []
    for i in range(chunks):
        delta: dict[str, Any] = {"role": "assistant"} if i == 0 else {}
        delta["content"] = f"tok{i} "
        finish = "stop" if i == chunks - 1 else None
        obj: dict[str, Any] = {
            "id": _ID,
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            # OpenAI sends "usage": null on every chunk when usage is requested.
            obj["usage"] = None
        events.append(_http_chunk(_sse(obj)))
    if include_usage:
        usage_obj = {
            "id": _ID,
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": chunks, "total_tokens": 9 + chunks},
        }
        events.append(_http_chunk(_sse(usage_obj)))
    events.append(_http_chunk(b"data: [DONE]\n\n"))
    events.append(b"0\r\n\r\n")
    return events


_MODELS_BODY = _encode(
    {
        "object": "list",
        "data": [{"id": "fake-model", "object": "model", "created": _CREATED, "owned_by": "fake"}],
    }
)
_HEALTH_BODY = b'{"status":"ok"}'


class _Responses:
    """Caches of prebuilt responses keyed by what varies (model, usage flag).

    Building JSON per request would make the upstream measurably slower than
    a cache lookup; the cache stays tiny because the benchmark uses one model.
    """

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self._completion: dict[str, bytes] = {}
        self._stream: dict[tuple[str, bool], list[bytes]] = {}

    def completion(self, model: str) -> bytes:
        body = self._completion.get(model)
        if body is None:
            body = self._completion[model] = build_completion(model)
        return body

    def stream(self, model: str, include_usage: bool) -> list[bytes]:
        key = (model, include_usage)
        events = self._stream.get(key)
        if events is None:
            events = self._stream[key] = build_stream_events(model, self.chunks, include_usage)
        return events


class UpstreamProtocol(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; httptools calls the ``on_*`` hooks."""

    __slots__ = ("_body", "_delay", "_parser", "_pending", "_responses", "_transport", "_url")

    def __init__(self, responses: _Responses, chunk_delay: float) -> None:
        self._responses = responses
        self._delay = chunk_delay
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        # Timer handle of a paced stream in progress (only with --chunk-delay-ms).
        self._pending: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence cast.
        transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Small responses must leave immediately, not wait for Nagle.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, b'{"error":{"message":"bad request"}}', keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._transport = None

    # -- httptools callbacks ------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method()
        keep_alive = self._parser.should_keep_alive()
        path = self._url.split(b"?", 1)[0]
        if method == b"POST" and path == b"/v1/chat/completions":
            self._chat(keep_alive)
        elif method == b"GET" and path == b"/v1/models":
            self._send(200, _MODELS_BODY, keep_alive)
        elif method == b"GET" and path == b"/health":
            self._send(200, _HEALTH_BODY, keep_alive)
        else:
            self._send(404, b'{"error":{"message":"not found"}}', keep_alive)

    # -- handlers -----------------------------------------------------------
    def _chat(self, keep_alive: bool) -> None:
        try:
            req = _decode(b"".join(self._body))
            if not isinstance(req, dict):
                raise ValueError("body is not an object")
        except (msgspec.DecodeError, ValueError):
            self._send(400, b'{"error":{"message":"invalid JSON body"}}', keep_alive)
            return
        model = req.get("model")
        if not isinstance(model, str):
            model = "fake-model"
        if req.get("stream") is True:
            opts = req.get("stream_options")
            usage = isinstance(opts, dict) and opts.get("include_usage") is True
            self._stream(self._responses.stream(model, usage), keep_alive)
        else:
            self._send(200, self._responses.completion(model), keep_alive)

    def _send(self, status: int, body: bytes, keep_alive: bool) -> None:
        t = self._transport
        if t is None:
            return
        extra = b"" if keep_alive else _CLOSE
        if status == 200:
            head = _JSON_HEADERS % (len(body), extra)
        else:
            reason = {400: b"Bad Request", 404: b"Not Found"}.get(status, b"Error")
            head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (
                status,
                reason,
                len(body),
                extra,
            )
        # One write per response: one syscall, one TCP segment for small bodies.
        t.write(head + body)
        if not keep_alive:
            t.close()

    def _stream(self, events: list[bytes], keep_alive: bool) -> None:
        t = self._transport
        if t is None:
            return
        head = _SSE_HEADERS % (b"" if keep_alive else _CLOSE)
        if self._delay <= 0:
            # Unpaced: the whole stream in one write. The gateway still has to
            # parse and re-emit every SSE event, which is what we measure.
            t.write(head + b"".join(events))
            if not keep_alive:
                t.close()
            return
        # Paced: headers + first event now, then one event per delay tick, so
        # time-to-first-byte and full time differ like with a real model.
        t.write(head + events[0])
        self._pace(events, 1, keep_alive)

    def _pace(self, events: list[bytes], i: int, keep_alive: bool) -> None:
        t = self._transport
        if t is None:
            return
        if i >= len(events):
            self._pending = None
            if not keep_alive:
                t.close()
            return
        loop = asyncio.get_running_loop()
        self._pending = loop.call_later(self._delay, self._pace_step, events, i, keep_alive)

    def _pace_step(self, events: list[bytes], i: int, keep_alive: bool) -> None:
        t = self._transport
        if t is None:
            return
        t.write(events[i])
        self._pace(events, i + 1, keep_alive)


async def serve(host: str, port: int, chunks: int, chunk_delay: float) -> None:
    """Serve forever; print ``PORT <n>`` once listening."""
    loop = asyncio.get_running_loop()
    responses = _Responses(chunks)
    server = await loop.create_server(
        lambda: UpstreamProtocol(responses, chunk_delay),
        host,
        port,
        reuse_address=True,
        backlog=4096,
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port (printed as 'PORT n')")
    ap.add_argument("--chunks", type=int, default=20, help="content chunks per streamed response")
    ap.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause between SSE events (0 = none)")
    ap.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU core")
    args = ap.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    try:
        uvloop.run(serve(args.host, args.port, args.chunks, args.chunk_delay_ms / 1000.0))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
