"""What an experiment or a shadow costs the requests it is on: side by side with the same route without one.

One run measures, for non-stream and stream requests (each with a fresh `user`, so every request is
hashed to an arm, and both arms are exercised):

* ``direct``: load generator -> fake upstream (the harness's own floor);
* ``plain route``: the gateway with no experiment;
* ``experiment (memory)``: a 50/50 experiment between two backends (both the fake upstream), arm
  metrics in process;
* ``shadow 100%``: every request also mirrored to a second backend once its response is over (the
  upstream then does twice the work, on the same core as the load generator: read req/s with that in mind);
* ``plain route (redis)``: no experiment, but ``redis.url`` set (routing state in Redis);
* ``experiment (redis)``: the experiment with arm metrics and the feedback ledger in Redis too
  (compared with ``plain route (redis)``).

Each at concurrency 1 (p50/p99 latency) and at ``--concurrency`` (req/s, gateway CPU per request).
The ``x-gateway-experiment`` header of every response is tallied: an experiment case must show both
arms, the others none. Placement as in ``overhead.py``: the gateway alone on core 0; upstream,
redis-server and load generator on core 1.

Usage (from the repo root)::

    python benchmarks/experiments.py
    python benchmarks/experiments.py --duration 2 --warmup 0.5 --modes non-stream --repeat 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import procs
import uvloop
from loadgen import NO_HEADER, build_request, percentile, run_load
from report import Target, median_of
from targets import HOST, MODEL, BenchError, Gateway, RedisServer, Upstream, log

VARY = b"@@@@@@@@@@"
PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Case:
    """One way through (or around) the gateway."""

    label: str
    kind: str  # direct | plain | experiment | shadow
    redis: bool = False

    def patch(self, upstream_port: int) -> Any:
        def apply(cfg: dict[str, Any]) -> None:
            cfg["backends"].append({"name": "fake2", "plugin": "openai_compat", "model": MODEL,
                                    "url": f"http://{HOST}:{upstream_port}"})
            route = cfg["routes"][0]
            if self.kind == "experiment":
                route["experiment"] = {"name": "bench", "arms": {"control": "fake", "candidate": "fake2"}}
            elif self.kind == "shadow":
                route["shadow"] = {"name": "bench-shadow", "target": "fake2", "sample": 1.0, "max_in_flight": 64}

        return apply


CASES = [Case("direct", "direct"), Case("plain route", "plain"), Case("experiment (memory)", "experiment"),
         Case("shadow 100%", "shadow"), Case("plain route (redis)", "plain", redis=True),
         Case("experiment (redis)", "experiment", redis=True)]


def body(stream: bool) -> bytes:
    doc: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}],
                           "max_tokens": 32, "user": f"user-{VARY.decode()}"}
    if stream:
        doc["stream"] = True
    return msgspec.json.encode(doc)


def measure(port: int, stream: bool, concurrency: int, args: argparse.Namespace,
            gateway_pids: list[int]) -> dict[str, Any]:
    edges: list[tuple[float, float]] = []

    def sample() -> None:
        edges.append((time.perf_counter(), procs.cpu_seconds(gateway_pids)))

    res = uvloop.run(run_load(HOST, port, build_request(HOST, port, PATH, body(stream)), stream=stream,
                              concurrency=concurrency, duration=args.duration, warmup=args.warmup,
                              on_window_start=sample, on_window_end=sample, vary=VARY,
                              count_header=b"x-gateway-experiment"))
    out: dict[str, Any] = {"rps": res.rps, "completed": res.completed, "failed": res.non_2xx + res.errors,
                           "header_counts": res.header_counts, "p50_ms": percentile(res.latency_s, 50) * 1e3,
                           "p99_ms": percentile(res.latency_s, 99) * 1e3}
    if len(edges) == 2 and gateway_pids and res.completed:
        out["gw_cpu_us"] = 1e6 * (edges[1][1] - edges[0][1]) / res.completed
    return out


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each number's median over the repeats (the header tallies are summed separately)."""
    return median_of([{k: v for k, v in r.items() if k != "header_counts"} for r in runs])


def arms_seen(case: Case, counts: dict[str, int]) -> tuple[str, bool]:
    """The header tally as text, and whether it is what the case must show."""
    total = sum(counts.values()) or 1
    text = " ".join(f"{'(none)' if k == NO_HEADER else k.split('=')[-1]} {100 * n / total:.0f}%"
                    for k, n in sorted(counts.items()))
    if case.kind == "experiment":
        ok = {"bench=control", "bench=candidate"} == set(counts)
    else:
        ok = set(counts) <= {NO_HEADER}
    return text, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--modes", default="non-stream,stream")
    ap.add_argument("--repeat", type=int, default=1, help="repeat everything N times, report medians")
    args = ap.parse_args(argv)
    modes = [m.strip() == "stream" for m in args.modes.split(",") if m.strip()]
    allowed = sorted(os.sched_getaffinity(0))
    gw_cpu, harness_cpu = allowed[0], allowed[min(1, len(allowed) - 1)]
    os.sched_setaffinity(0, {harness_cpu})
    log_dir = Path(tempfile.mkdtemp(prefix="gw-exp-"))
    runs: dict[tuple[str, bool, int], list[dict[str, Any]]] = {}
    upstream = Upstream(harness_cpu, 20, 0.0, log_dir)
    redis = RedisServer(harness_cpu, log_dir)
    bad: list[str] = []
    try:
        for rep in range(args.repeat):
            for case in CASES:
                gw = None
                if case.kind != "direct":
                    target = Target("uvicorn", "aiohttp", "redis" if case.redis else "local")
                    gw = Gateway(target, upstream.port, gw_cpu, log_dir, [], 30.0,
                                 redis_url=redis.url if case.redis else None, name=f"gw-{case.kind}-{rep}",
                                 patch=case.patch(upstream.port))
                try:
                    for stream in modes:
                        for conc in (1, args.concurrency):
                            r = measure(gw.port if gw else upstream.port, stream, conc, args, gw.pids if gw else [])
                            mode = "stream" if stream else "non-stream"
                            log(f"[{rep + 1}/{args.repeat}] {case.label:<20} {mode:<10} c={conc:<3} "
                                f"{r['rps']:>8,.0f} req/s p50 {r['p50_ms']:.3f} ms")
                            runs.setdefault((case.label, stream, conc), []).append(r)
                finally:
                    if gw is not None:
                        gw.close()
    except BenchError as e:
        log(f"ERROR: {e}")
        return 2
    finally:
        upstream.close()
        redis.close()
    conc = args.concurrency
    print(f"\nExperiments and shadows on the request path ({os.cpu_count()} cpus, Python {platform.python_version()}; "
          f"gateway core {gw_cpu}, upstream+redis+loadgen core {harness_cpu}; uvicorn+aiohttp; "
          f"{args.duration:g}s x {args.repeat} (median))")
    head = ["mode", "path", "c=1 p50/p99 ms", "added p50 ms vs plain", f"c={conc} req/s", "x plain",
            "gw CPU us/req", "x-gateway-experiment", "fail"]
    rows = []
    for stream in modes:
        for case in CASES:
            base = "plain route (redis)" if case.redis else "plain route"
            plain1, plainn = medians(runs[(base, stream, 1)]), medians(runs[(base, stream, conc)])
            one, many = runs[(case.label, stream, 1)], runs[(case.label, stream, conc)]
            m1, mn = medians(one), medians(many)
            counts: dict[str, int] = {}
            for r in one + many:
                for k, n in r["header_counts"].items():
                    counts[k] = counts.get(k, 0) + n
            seen, ok = arms_seen(case, counts)
            if not ok:
                bad.append(f"{case.label}: {seen}")
            rows.append([
                "stream" if stream else "non-stream", case.label, f"{m1['p50_ms']:.3f}/{m1['p99_ms']:.3f}",
                "-" if case.kind in ("direct", "plain") else f"{m1['p50_ms'] - plain1['p50_ms']:+.3f}",
                f"{mn['rps']:,.0f}", "-" if case.kind in ("direct", "plain") else f"{mn['rps'] / plainn['rps']:.2f}",
                f"{mn['gw_cpu_us']:.0f}" if "gw_cpu_us" in mn else "-", seen + ("" if ok else " (!)"),
                str(sum(r["failed"] for r in one + many)),
            ])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) if i in (0, 1, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                    strict=True))))
    failures = sum(r["failed"] for rs in runs.values() for r in rs)
    for line in bad:
        print(f"[INVALID] {line}")
    return 2 if bad else (1 if failures else 0)


if __name__ == "__main__":
    sys.exit(main())
