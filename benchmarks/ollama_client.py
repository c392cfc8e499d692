"""Which client should carry Ollama traffic: CPU per request, the `ollama` client against aiohttp.

`python benchmarks/ollama_client.py [--requests 1000] [--concurrency 64]` starts the
emulator in a subprocess and, in this process, sends the same `/api/chat` (whole answer)
and `/api/generate` (NDJSON stream) requests through each client, measuring this process's
CPU time per request and the request rate, side by side in one run:

- `ollama`: the official AsyncClient (httpx + pydantic), as an application would use it;
- `aiohttp`: the gateway's shared upstream with msgspec decoding (what OllamaBackend does
  minus the OpenAI translation);
- `plugin`: OllamaBackend itself, translation to OpenAI bytes included.

A benchmark script, not a test: it prints ratios and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import msgspec

from gateway.backend import BackendContext
from gateway.config import BackendConfig
from gateway.upstream import UpstreamTimeouts
from gateway.upstream.aiohttp_client import AiohttpUpstream
from plugins.ollama.backend import OllamaBackend
from plugins.ollama.wire import ChatAnswer, GenerateAnswer

MODEL = "llama3.2"
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
TIMEOUTS = UpstreamTimeouts(connect_s=5, first_byte_s=60, total_s=120)
_chat = msgspec.json.Decoder(ChatAnswer).decode
_line = msgspec.json.Decoder(GenerateAnswer).decode


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _measure(label: str, one: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> float:
    for _ in range(min(concurrency, 32)):  # warm the pool and the code paths
        await one()
    queue = iter(range(requests))

    async def worker() -> None:
        for _ in queue:
            await one()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    per_request_us = cpu / requests * 1e6
    print(f"  {label:<9} {per_request_us:8.0f} µs CPU/request   {requests / wall:8.0f} req/s", flush=True)
    return per_request_us


async def run(url: str, requests: int, concurrency: int) -> None:
    import ollama

    client = ollama.AsyncClient(host=url)
    upstream = AiohttpUpstream()
    config = msgspec.convert({"name": "bench", "plugin": "ollama", "model": MODEL, "url": url}, BackendConfig)
    backend = OllamaBackend(config, BackendContext(upstream=upstream))
    chat_body = msgspec.json.encode({"model": MODEL, "messages": MESSAGES, "stream": False,
                                     "options": {"num_predict": 16}})
    gen_body = msgspec.json.encode({"model": MODEL, "prompt": "Why is the sky blue?", "stream": True,
                                    "options": {"num_predict": 16}})

    async def ollama_chat() -> None:
        await client.chat(model=MODEL, messages=MESSAGES, options={"num_predict": 16})

    async def aiohttp_chat() -> None:
        response = await upstream.request("POST", url + "/api/chat", body=chat_body, timeouts=TIMEOUTS)
        _chat(response.body)

    async def plugin_chat() -> None:
        await backend.chat({"model": MODEL, "messages": MESSAGES, "max_tokens": 16})

    async def ollama_stream() -> None:
        async for _ in await client.generate(model=MODEL, prompt="Why is the sky blue?", stream=True,
                                             options={"num_predict": 16}):
            pass

    async def aiohttp_stream() -> None:
        stream = await upstream.open_stream("POST", url + "/api/generate", body=gen_body, timeouts=TIMEOUTS)
        pending = b""
        async for data in stream.chunks():
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _line(line)
        await stream.aclose()

    async def plugin_stream() -> None:
        stream = await backend.stream_completion({"model": MODEL, "prompt": "Why is the sky blue?", "max_tokens": 16})
        async for _ in stream:
            pass
        await stream.aclose()

    try:
        for title, cases in (("POST /api/chat (whole answer)", (ollama_chat, aiohttp_chat, plugin_chat)),
                             ("POST /api/generate (NDJSON stream, 16 tokens)",
                              (ollama_stream, aiohttp_stream, plugin_stream))):
            print(f"{title}, {requests} requests, {concurrency} concurrent:")
            results = [await _measure(label, case, requests, concurrency)
                       for label, case in zip(("ollama", "aiohttp", "plugin"), cases, strict=True)]
            print(f"  ollama client / aiohttp: {results[0] / results[1]:.1f}x the CPU per request")
    finally:
        await upstream.aclose()
        await client._client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    port = _port()
    emulator = subprocess.Popen([sys.executable, "-m", "plugins.ollama.emulator", "--port", str(port),
                                 "--models", MODEL], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        asyncio.run(run(url, args.requests, args.concurrency))
    finally:
        emulator.terminate()
        emulator.wait(10)


if __name__ == "__main__":
    main()
