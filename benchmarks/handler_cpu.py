"""CPU the OpenAI handler spends per request, without network or server: the gateway's own code.

The handler is called directly as an ASGI app with a scripted in-process backend (the unit
tests' fake: 20 content chunks per stream), so what is timed is decoding, routing,
statistics, accounting and relaying, and nothing of uvicorn, aiohttp or the kernel. To see
what a change costs, compare source trees side by side in one run, e.g. against the last
commit of main checked out in a worktree:

    git worktree add /tmp/before main
    .venv/bin/python benchmarks/handler_cpu.py . /tmp/before

Each tree is measured in a fresh interpreter, alternating, `--repeat` times; the table shows
medians and each tree's ratio to the first. benchmarks/overhead.py measures the whole path.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

_MEASURE = r'''
import asyncio, gc, sys, time
repo, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path[:0] = [repo, repo + "/tests"]
import msgspec
from unit.fakes import DONE, ScriptedStream, chunk_event, fake_registry, gateway_config
from gateway.api.openai_routes import OpenAIHandler
from gateway.state import GatewayState


async def main() -> None:
    config = gateway_config()
    state = GatewayState(config, fake_registry())
    backend = next(iter(state.backends.values()))
    events = [chunk_event("tok") for _ in range(20)] + [DONE]
    backend.stream_factory = lambda: ScriptedStream(list(events))
    # Since hot reload the handler serves a LiveState (the state a reload swaps); a tree before it, the state.
    import inspect
    if "live" in inspect.signature(OpenAIHandler.__init__).parameters:
        from gateway.ops.live_state import LiveState
        handler = OpenAIHandler(LiveState(state), "chat")
    else:
        handler = OpenAIHandler(state, "chat")
    body = msgspec.json.encode({"model": config.routes[0].model.replace("*", "m"), "stream": mode == "stream",
                                "messages": [{"role": "user", "content": "hello there"}]})
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}

    async def one() -> None:
        delivered = False

        async def receive() -> dict[str, object]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client stays connected
            raise AssertionError

        async def send(message: dict[str, object]) -> None:
            return None

        await handler(scope, receive, send)

    for i in range(count // 10 + count):
        if i == count // 10:  # after warming up
            started = time.process_time()
        await one()
        if i % 1000 == 0:
            backend.calls.clear()
            backend.streams.clear()
    print((time.process_time() - started) / count * 1e6)

gc.freeze()
asyncio.run(main())
'''


def measure(tree: Path, mode: str, count: int) -> float:
    """Microseconds of CPU per request for the gateway in `tree`."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(tree.resolve()), mode, str(count)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: measuring failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="*", type=Path, default=[Path(".")],
                        help="source trees to compare (default: this one); the first is the reference")
    parser.add_argument("--requests", type=int, default=20_000, help="requests per measurement (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per tree and mode (default 3)")
    args = parser.parse_args()
    results: dict[tuple[Path, str], list[float]] = {}
    for round_number in range(args.repeat):
        for mode in ("non-stream", "stream"):
            for tree in args.trees:  # alternating, so drift in the machine hits every tree alike
                value = measure(tree, mode.replace("-", ""), args.requests)
                results.setdefault((tree, mode), []).append(value)
                print(f"  round {round_number + 1}/{args.repeat} {mode:<10} {tree}: {value:.1f} us", file=sys.stderr)
    print(f"{'tree':<40} {'mode':<11} {'us/request (median)':>20} {'ratio':>7}")
    for mode in ("non-stream", "stream"):
        reference = statistics.median(results[(args.trees[0], mode)])
        for tree in args.trees:
            median = statistics.median(results[(tree, mode)])
            print(f"{tree!s:<40} {mode:<11} {median:>20.1f} {median / reference:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
