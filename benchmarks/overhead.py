"""Measure the gateway's added latency and throughput cost against a fake upstream.

Every scenario (concurrency x streaming) is measured twice in one run:
*direct* (load generator -> fake upstream) and *through the gateway*
(load generator -> gateway -> fake upstream). The difference is the gateway's
overhead; the direct numbers show the ceiling the harness itself can measure.

Core placement (this is meant for a 2-core box):

* core 0: the gateway, alone -- it is what we measure, so nothing else may
  steal its CPU.
* core 1: the fake upstream *and* the load generator (this process). Both are
  lean (raw asyncio + httptools, ~40k+ req/s together on one core), so they
  need far less CPU than the gateway, and keeping them on core 1 for the
  direct runs too means direct and gateway runs differ only by the gateway.
  The ``core1 %`` column shows how busy that core was during a gateway run;
  near 100 % would mean the harness, not the gateway, was the limit.

Usage (from the repo root)::

    python benchmarks/overhead.py
    python benchmarks/overhead.py --server uvicorn,granian --upstream-client aiohttp,httpx --repeat 3
    python benchmarks/overhead.py --direct-only --duration 3
    python benchmarks/overhead.py --json out.json

Exit status: 0 ok; 1 some requests failed (non-2xx / errors, see the table);
2 the gateway or upstream did not start or failed its sanity check;
3 a target was missed and ``--fail-on-target`` was given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import procs
import uvloop
from loadgen import LoadResult, build_request, percentile, run_load
from report import Scenario, Target, check_targets, median_of, nan_to_none, print_table
from targets import HOST, BenchError, Gateway, RedisServer, Upstream, log, request_body

# -- measuring ------------------------------------------------------------------


def measure(
    scenario: Scenario,
    port: int,
    *,
    duration: float,
    warmup: float,
    headers: dict[str, str],
    upstream_pids: list[int],
    gateway_pids: list[int],
) -> dict[str, Any]:
    """Run one load and turn it into the numbers the report needs."""
    req = build_request(HOST, port, "/v1/chat/completions", request_body(scenario.stream), headers)
    edges: list[tuple[float, float, float, float]] = []

    def sample() -> None:
        # (wall, gateway cpu, upstream cpu, load generator cpu)
        edges.append(
            (
                time.perf_counter(),
                procs.cpu_seconds(gateway_pids),
                procs.cpu_seconds(upstream_pids),
                procs.self_cpu_seconds(),
            )
        )

    res: LoadResult = uvloop.run(
        run_load(
            HOST,
            port,
            req,
            stream=scenario.stream,
            concurrency=scenario.concurrency,
            duration=duration,
            warmup=warmup,
            on_window_start=sample,
            on_window_end=sample,
        )
    )
    out: dict[str, Any] = {
        "rps": res.rps,
        "completed": res.completed,
        "non_2xx": res.non_2xx,
        "errors": res.errors,
        "error_samples": res.error_samples,
        "status_counts": {str(k): v for k, v in sorted(res.status_counts.items())},
        "full_p50_ms": percentile(res.latency_s, 50) * 1e3,
        "full_p99_ms": percentile(res.latency_s, 99) * 1e3,
        "ttfb_p50_ms": percentile(res.ttfb_s, 50) * 1e3,
        "ttfb_p99_ms": percentile(res.ttfb_s, 99) * 1e3,
    }
    # The headline latency: time to first byte for streams, full time otherwise.
    key = "ttfb" if scenario.stream else "full"
    out["p50_ms"] = out[f"{key}_p50_ms"]
    out["p99_ms"] = out[f"{key}_p99_ms"]
    if len(edges) == 2:
        (w0, g0, u0, s0), (w1, g1, u1, s1) = edges
        wall = w1 - w0
        gw_cpu = g1 - g0
        out["gw_cpu_s"] = gw_cpu
        out["gw_cpu_pct"] = 100.0 * gw_cpu / wall if gateway_pids else float("nan")
        out["gw_cpu_us_per_req"] = 1e6 * gw_cpu / res.completed if gateway_pids and res.completed else float("nan")
        out["core1_pct"] = 100.0 * ((u1 - u0) + (s1 - s0)) / wall
    return out


# -- main -----------------------------------------------------------------------


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0, help="uncounted warm-up seconds per run (default 1)")
    ap.add_argument("--concurrency", default="1,64", help="comma list (default 1,64)")
    ap.add_argument("--modes", default="non-stream,stream", help="comma list of non-stream,stream")
    ap.add_argument("--chunks", type=int, default=20, help="SSE content chunks per streamed response (default 20)")
    ap.add_argument("--chunk-delay-ms", type=float, default=0.0, help="upstream pause between SSE events")
    ap.add_argument("--server", default="uvicorn", help="comma list: uvicorn,granian (one gateway run each)")
    ap.add_argument("--upstream-client", default="aiohttp", help="comma list: aiohttp,httpx (one gateway run each)")
    ap.add_argument("--repeat", type=int, default=1, help="repeat everything N times, report medians")
    ap.add_argument("--json", type=Path, default=None, help="write results to this JSON file")
    ap.add_argument("--direct-only", action="store_true", help="skip the gateway (check the harness itself)")
    ap.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        help="extra arg for 'serve' (repeatable; use = for dashes: --gateway-arg=--log-level --gateway-arg=warning)",
    )
    ap.add_argument("--state", default="local", help="comma list: local,redis (routing state in process, or "
                    "shared through a redis-server started for the run; one gateway run each)")
    ap.add_argument("--header", action="append", default=[], help="extra request header 'Name: value' (repeatable)")
    ap.add_argument(
        "--gateway-module",
        default="gateway.cli",
        help="module run as 'python -m MODULE serve ...' (default gateway.cli; e.g. a reference proxy)",
    )
    ap.add_argument("--ready-timeout", type=float, default=30.0, help="seconds to wait for GET /ready")
    ap.add_argument("--gateway-cpu", type=int, default=None, help="core for the gateway (default: first allowed)")
    ap.add_argument("--harness-cpu", type=int, default=None, help="core for upstream + load generator (default: 2nd)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    ap.add_argument("--fail-on-target", action="store_true", help="exit 3 if a target is missed")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temp dir with configs and logs")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    concurrencies = [int(c) for c in _csv(args.concurrency)]
    modes = _csv(args.modes)
    if bad := set(modes) - {"non-stream", "stream"}:
        raise SystemExit(f"unknown --modes {sorted(bad)}")
    scenarios = [Scenario(c, m == "stream") for c in concurrencies for m in modes]
    gw_targets = (
        [] if args.direct_only else [Target(s, c, st) for s in _csv(args.server) for c in _csv(args.upstream_client)
                                     for st in _csv(args.state)]
    )
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}

    allowed = sorted(os.sched_getaffinity(0))
    if args.no_pin:
        gw_cpu = harness_cpu = None
    else:
        gw_cpu = args.gateway_cpu if args.gateway_cpu is not None else allowed[0]
        harness_cpu = args.harness_cpu if args.harness_cpu is not None else allowed[min(1, len(allowed) - 1)]
        if gw_cpu == harness_cpu:
            log(f"warning: only core {gw_cpu} available; gateway and harness share it")
        # The load generator is this process: pin it next to the upstream.
        os.sched_setaffinity(0, {harness_cpu})

    log_dir = Path(tempfile.mkdtemp(prefix="gw-overhead-"))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    upstream: Upstream | None = None
    redis: RedisServer | None = None
    try:
        if any(t.state == "redis" for t in gw_targets):
            redis = RedisServer(harness_cpu, log_dir)
            log(f"redis-server on :{redis.port} (core {harness_cpu})")
        upstream = Upstream(harness_cpu, args.chunks, args.chunk_delay_ms, log_dir)
        log(f"fake upstream on :{upstream.port} (core {harness_cpu}), logs in {log_dir}")
        up_pids = [upstream.proc.pid]
        for rep in range(args.repeat):
            # Rotate the gateway configs each repeat so slow drift (thermal,
            # noisy neighbours) does not always hit the same config.
            k = rep % len(gw_targets) if gw_targets else 0
            order: list[Target] = [Target(), *gw_targets[k:], *gw_targets[:k]]
            for target in order:
                gw: Gateway | None = None
                if target.server is not None:
                    gw = Gateway(
                        target,
                        upstream.port,
                        gw_cpu,
                        log_dir,
                        args.gateway_arg,
                        args.ready_timeout,
                        args.gateway_module,
                        redis_url=redis.url if redis is not None and target.state == "redis" else None,
                    )
                try:
                    port = gw.port if gw else upstream.port
                    for sc in scenarios:
                        log(
                            f"[{rep + 1}/{args.repeat}] {target.label:<16} {sc.label:<16} "
                            f"{args.warmup:g}s warm-up + {args.duration:g}s ..."
                        )
                        r = measure(
                            sc,
                            port,
                            duration=args.duration,
                            warmup=args.warmup,
                            headers=headers,
                            upstream_pids=up_pids,
                            gateway_pids=gw.pids if gw else [],
                        )
                        fails = r["non_2xx"] + r["errors"]
                        log(
                            f"    {r['rps']:>9,.0f} req/s  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms"
                            + (f"  FAILURES {fails}: {r['error_samples']} {r['status_counts']}" if fails else "")
                        )
                        runs.setdefault((target.label, sc.label), []).append(r)
                        if gw is not None and gw.proc.poll() is not None:
                            raise BenchError(
                                f"gateway exited (status {gw.proc.returncode}) during {sc.label}\n{gw.logs()}"
                            )
                finally:
                    if gw is not None:
                        gw.close()
    except BenchError as e:
        log(f"\nERROR: {e}")
        log(f"(logs kept in {log_dir})")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if upstream is not None:
            upstream.close()
        if redis is not None:
            redis.close()

    med = {key: median_of(v) for key, v in runs.items()}
    targets = [Target(), *gw_targets]
    print(
        f"\nGateway overhead  ({platform.node()}, {os.cpu_count()} cpus, Python {platform.python_version()}; "
        f"{'unpinned' if args.no_pin else f'gateway core {gw_cpu}, upstream+loadgen core {harness_cpu}'}; "
        f"{args.duration:g}s x {args.repeat} "
        f"(median), {args.chunks} chunks/stream)"
    )
    print_table(scenarios, targets, med)
    failures = sum(m["non_2xx"] + m["errors"] for m in med.values())
    for (t, s), m in sorted(med.items()):
        if m["non_2xx"] + m["errors"]:
            print(f"failures in {t} / {s}: status {m['status_counts']} errors {m['error_samples']}")
    targets_ok = check_targets(scenarios, targets, med) if gw_targets else True

    if args.json is not None:
        doc = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": {
                "node": platform.node(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "gateway_cpu": gw_cpu,
                "harness_cpu": harness_cpu,
            },
            "scenarios": [asdict(s) | {"label": s.label} for s in scenarios],
            "results": [{"target": t, "scenario": s, "median": med[(t, s)], "runs": runs[(t, s)]} for (t, s) in runs],
        }
        # NaN is not valid JSON; write null instead.
        args.json.write_text(json.dumps(nan_to_none(doc), indent=2))
        log(f"wrote {args.json}")
    if not args.keep_logs and not failures:
        for p in log_dir.iterdir():
            p.unlink()
        log_dir.rmdir()
    else:
        log(f"logs kept in {log_dir}")

    if failures:
        log(f"ERROR: {failures} failed requests (see table)")
        return 1
    if args.fail_on_target and not targets_ok:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
