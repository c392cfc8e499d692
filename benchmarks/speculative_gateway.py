"""The emulated GPU-like target end to end through the gateway (`benchmarks/speculative.py --gateway`).

The decoder-level rows of benchmarks/speculative.py leave out what serving adds: rendering the chat
through the target's /tokenize, detokenizing every round, SSE, the handler. Here a gateway process serves
a speculative route (n-gram drafter, k auto) on the vLLM emulator (4 ms a call, 25 ms a decoded token,
+0.5 ms a verified prefix) and the openai SDK asks it input-grounded chat requests (copy a text, with
edits at the emulated model's `edit_rate`). Target alone is the same rendered prompt decoded by the
emulator directly, streamed token by token, without the gateway. The texts must be identical.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import yaml
from procs import free_port, spawn, stop, tail, wait_until

from gateway.speculative.vllm_target import VllmTokenTarget

ROOT = Path(__file__).resolve().parents[1]
MODEL = "emulated-gpu"
RTT_MS, DECODE_MS, VERIFY_TOKEN_MS = 4.0, 25.0, 0.5


def documents(count: int) -> list[list[dict[str, str]]]:
    """Chats whose answer copies a text: the emulated model starts copying after a 1-gram match of the
    prompt's last token, and the template ends on "<|im_start|>assistant", which the text also holds."""
    chats = []
    for d in range(count):
        text = " ".join(f"w{d}x{i % 53}y{i}" for i in range(400))
        chats.append([{"role": "user", "content": f"Copy this text:\n<|im_start|>assistant\n{text}\nNow copy it."}])
    return chats


async def target_alone(url: str, chat: list[dict[str, str]], max_tokens: int) -> tuple[str, float, int]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        prompt = (await client.post("/tokenize", json={"model": MODEL, "messages": chat,
                                                       "add_generation_prompt": True})).json()["tokens"]
        target = VllmTokenTarget(url, MODEL)
        try:
            started = time.perf_counter()
            ids = [t async for t in target.generate(prompt, max_tokens)]
            seconds = time.perf_counter() - started
        finally:
            await target.aclose()
        text = (await client.post("/detokenize", json={"model": MODEL, "tokens": [t for t in ids if t != 2]}))
    return text.json()["prompt"], seconds, len(ids)


def run_gateway(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-spec-gw-") as logs:
        emulator_port, gateway_port = free_port(), free_port()
        emulator_url, gateway_url = f"http://127.0.0.1:{emulator_port}", f"http://127.0.0.1:{gateway_port}"
        config = {"backends": [{"name": "gpu", "plugin": "vllm", "model": MODEL, "url": emulator_url}],
                  "routes": [{"model": "coder", "backends": ["gpu"], "speculative": {"target": "gpu"}}]}
        path = Path(logs) / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        emulator = spawn([sys.executable, "-m", "plugins.vllm.emulator", "--port", str(emulator_port),
                          "--served-model-name", MODEL, "--rtt-ms", str(RTT_MS), "--decode-ms", str(DECODE_MS),
                          "--verify-token-ms", str(VERIFY_TOKEN_MS), "--edit-rate", str(args.edit_rate)],
                         cpu=None, log_dir=Path(logs), name="emulator", cwd=ROOT)
        gateway = spawn([sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--port",
                         str(gateway_port), "--log-level", "warning"], cpu=None, log_dir=Path(logs), name="gateway",
                        cwd=ROOT)
        try:
            def ready() -> bool:
                try:
                    pairs = httpx.get(gateway_url + "/admin/speculative", timeout=2).json()["pairs"]
                    return pairs[0]["state"] == "ready"
                except (httpx.HTTPError, ValueError, KeyError, IndexError):
                    return False

            if not wait_until(ready, 60):
                print(f"the gateway did not start:\n{tail(Path(logs) / 'gateway.stderr')}")
                return 1
            return _measure(args, emulator_url, gateway_url)
        finally:
            stop(gateway)
            stop(emulator)


def _measure(args: argparse.Namespace, emulator_url: str, gateway_url: str) -> int:
    client = openai.OpenAI(base_url=gateway_url + "/v1", api_key="none", timeout=300)
    alone_s, spec_s, tokens, drafted, accepted, calls = [], [], 0, 0, 0, 0
    ttfts: list[float] = []
    exact = True
    for chat in documents(args.prompts):
        expected, seconds, count = asyncio.run(target_alone(emulator_url, chat, args.max_tokens))
        alone_s.append(seconds)
        started = time.perf_counter()
        stream = client.chat.completions.create(model="coder", messages=chat, temperature=0,  # type: ignore[arg-type]
                                                max_tokens=args.max_tokens, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_headers={"cache-control": "no-cache, no-store"})
        parts, first, spec = [], None, {}
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                parts.append(chunk.choices[0].delta.content)
            extra = (chunk.model_extra or {}).get("x_speculative")
            spec = extra or spec
        spec_s.append(time.perf_counter() - started)
        ttfts.append((first or time.perf_counter()) - started)
        exact &= "".join(parts) == expected
        tokens += count
        drafted += spec.get("drafted", 0)
        accepted += spec.get("accepted", 0)
        calls += spec.get("target_calls", 0)
    alone_rate, spec_rate = tokens / sum(alone_s), tokens / sum(spec_s)
    print(f"emulated vLLM target (rtt {RTT_MS} ms, decode {DECODE_MS} ms/token, verify +{VERIFY_TOKEN_MS} ms/prefix), "
          f"edit_rate {args.edit_rate}, {args.prompts} chats x {args.max_tokens} tokens, streamed through the gateway")
    print(f"{'mode':<40} {'tok/s':>8} {'p50 e2e ms':>11} {'accept':>7} {'tok/call':>9}")
    print(f"{'target alone (direct, streamed)':<40} {alone_rate:>8.1f} {statistics.median(alone_s) * 1000:>11.0f} "
          f"{'-':>7} {1:>9.2f}")
    print(f"{'gateway, n-gram speculation (SSE)':<40} {spec_rate:>8.1f} {statistics.median(spec_s) * 1000:>11.0f} "
          f"{accepted / drafted if drafted else 0:>7.2f} {tokens / calls if calls else 0:>9.2f}  "
          f"{spec_rate / alone_rate:.2f}x, TTFT p50 {statistics.median(ttfts) * 1000:.0f} ms")
    print(f"outputs {'IDENTICAL' if exact else 'DIFFER'}")
    return 0 if exact else 2
