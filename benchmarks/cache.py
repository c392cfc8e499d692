"""Measure the response cache: hits beside misses, beside uncached requests and beside the backend directly.

One run measures, for non-stream and stream (``include_usage``) requests:

* ``direct``: load generator -> fake upstream (the harness's own floor);
* ``gateway, bypass``: not cacheable (no temperature), so the cache stays out of it;
* ``gateway, miss (memory|redis)``: cacheable (temperature 0) but every body unique (a counter in
  the prompt), so each request runs the whole miss path: lookup, flight, backend, record, store write;
* ``gateway, hit (memory|redis)``: one cacheable body repeated, answered from the in-process LRU
  store, or from Redis (a gateway with ``redis: {url}``; that also puts its routing state there).

Each is measured at concurrency 1 (latency p50/p99: one request's path) and at ``--concurrency``
(req/s). Before each load one probe checks the ``x-gateway-cache`` header says what the scenario
claims (and that a hit carries the same answer as the miss that stored it); during the load every
response's header is tallied and must agree too (e.g. a Redis lookup over the cache's time budget
turns hits into misses for a while). Any disagreement fails the run (exit 2), after the table.

Placement as in ``overhead.py``: the gateway alone on core 0; the fake upstream, redis-server and
this load generator on core 1 (``core1 %`` shows how busy that core was).

Usage (from the repo root)::

    python benchmarks/cache.py
    python benchmarks/cache.py --duration 2 --warmup 0.5 --modes non-stream
    python benchmarks/cache.py --repeat 3 --json cache.json --fail-on-target

Exit status: 0 ok; 1 some requests failed; 2 a process did not start or a cache-header/content check
failed; 3 a target was missed and ``--fail-on-target`` was given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import procs
import uvloop
from loadgen import NO_HEADER, build_request, percentile, run_load
from report import Target, median_of, nan_to_none
from targets import HOST, MODEL, BenchError, Gateway, RedisServer, Upstream, log, request_body

# The issue's target: a hit from Redis on loopback, through the gateway, at concurrency 1.
TARGET_HIT_REDIS_P50_MS = 1.0
TARGET_HIT_REDIS_P99_MS = 3.0
VARY = b"@@@@@@@@@@"  # in the miss body's prompt; loadgen puts a fresh counter in its place per request
PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Case:
    """One path through (or around) the gateway."""

    kind: str  # direct | bypass | miss | hit
    store: str = "memory"  # the gateway's cache store (ignored for direct)

    @property
    def label(self) -> str:
        if self.kind == "direct":
            return "direct"
        return f"gateway, {self.kind}" + (f" ({self.store})" if self.kind in ("miss", "hit") else "")

    @property
    def expect(self) -> str:
        """The x-gateway-cache header every response must carry."""
        return NO_HEADER if self.kind == "direct" else self.kind


CASES = [Case("direct"), Case("bypass"), Case("miss"), Case("hit"), Case("miss", "redis"), Case("hit", "redis")]


def body(case: Case, stream: bool) -> bytes:
    """The request body of a case: cacheable (temperature 0) for misses and hits."""
    if case.kind in ("direct", "bypass"):
        return request_body(stream)
    mode = "stream" if stream else "non-stream"
    prompt = f"Say hello. #{VARY.decode()}" if case.kind == "miss" else f"Say hello. (hit, {mode})"
    doc: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": 32, "temperature": 0}
    if stream:
        doc |= {"stream": True, "stream_options": {"include_usage": True}}
    return msgspec.json.encode(doc)


# -- the probe before each load -------------------------------------------------------------


def answer_of(raw: bytes, stream: bool) -> tuple[Any, ...]:
    """What a client reads from a response: texts, finish reasons, token counts (not ids or cache marks)."""
    if not stream:
        doc = msgspec.json.decode(raw)
        usage = doc.get("usage") or {}
        return (tuple((c["message"]["content"], c["finish_reason"]) for c in doc["choices"]),
                usage.get("prompt_tokens"), usage.get("completion_tokens"))
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    if not events or events[-1] != b"[DONE]":
        raise BenchError(f"stream did not end with data: [DONE]: {raw[-200:]!r}")
    text, finish, usage = [], [], {}
    for event in events[:-1]:
        chunk = msgspec.json.decode(event)
        usage = chunk.get("usage") or usage
        for c in chunk.get("choices") or ():
            text.append(c.get("delta", {}).get("content") or "")
            if c.get("finish_reason"):
                finish.append(c["finish_reason"])
    return ((("".join(text), *finish),), usage.get("prompt_tokens"), usage.get("completion_tokens"))


def probe(port: int, data: bytes, stream: bool, headers: dict[str, str] | None = None) -> tuple[str, tuple[Any, ...]]:
    """One request: its x-gateway-cache header (NO_HEADER if none) and its answer."""
    req = urllib.request.Request(f"http://{HOST}:{port}{PATH}", data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, raw = r.headers.get("x-gateway-cache", NO_HEADER), r.read()
    except urllib.error.HTTPError as e:
        raise BenchError(f"probe got HTTP {e.code}: {e.read()[:300]!r}") from None
    except OSError as e:
        raise BenchError(f"probe failed: {e!r}") from None
    try:
        return status, answer_of(raw, stream)
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError) as e:
        raise BenchError(f"probe got an unexpected body ({e!r}): {raw[:300]!r}") from None


def check_case(case: Case, port: int, stream: bool) -> None:
    """Raise BenchError unless a sample response is what the case claims (for a hit: the miss's answer)."""
    data = body(case, stream)
    if case.kind == "miss":
        data = data.replace(VARY, b"probe-%d" % time.time_ns())
    if case.kind == "hit":
        # no-cache: skip the lookup but store the answer, so this is a miss even if an entry exists.
        status, miss_answer = probe(port, data, stream, {"Cache-Control": "no-cache"})
        if status != "miss":
            raise BenchError(f"{case.label}: priming request got x-gateway-cache {status!r}, expected 'miss'")
        time.sleep(0.05)  # the store write follows the end of the response; let it land
    status, answer = probe(port, data, stream)
    if status != case.expect:
        raise BenchError(f"{case.label}: sample response got x-gateway-cache {status!r}, expected {case.expect!r}")
    if case.kind == "hit" and answer != miss_answer:
        raise BenchError(f"{case.label}: a hit answered {answer!r}, the miss that stored it {miss_answer!r}")


# -- measuring ------------------------------------------------------------------------------


def measure(case: Case, stream: bool, concurrency: int, port: int, args: argparse.Namespace,
            harness_pids: list[int], gateway_pids: list[int]) -> dict[str, Any]:
    """One load run, with the tally of its responses' x-gateway-cache headers."""
    req = build_request(HOST, port, PATH, body(case, stream))
    edges: list[tuple[float, float, float, float]] = []

    def sample() -> None:  # (wall, gateway cpu, upstream + redis cpu, load generator cpu)
        edges.append((time.perf_counter(), procs.cpu_seconds(gateway_pids), procs.cpu_seconds(harness_pids),
                      procs.self_cpu_seconds()))

    res = uvloop.run(run_load(
        HOST, port, req, stream=stream, concurrency=concurrency, duration=args.duration, warmup=args.warmup,
        on_window_start=sample, on_window_end=sample, vary=VARY if case.kind == "miss" else None,
        count_header=b"x-gateway-cache",
    ))
    out: dict[str, Any] = {
        "rps": res.rps, "completed": res.completed, "non_2xx": res.non_2xx, "errors": res.errors,
        "error_samples": res.error_samples, "header_counts": res.header_counts,
        "p50_ms": percentile(res.latency_s, 50) * 1e3, "p99_ms": percentile(res.latency_s, 99) * 1e3,
        "ttfb_p50_ms": percentile(res.ttfb_s, 50) * 1e3, "ttfb_p99_ms": percentile(res.ttfb_s, 99) * 1e3,
    }
    if len(edges) == 2:
        (w0, g0, h0, s0), (w1, g1, h1, s1) = edges
        wall = w1 - w0
        out["gw_cpu_us_per_req"] = 1e6 * (g1 - g0) / res.completed if gateway_pids and res.completed else float("nan")
        out["core1_pct"] = 100.0 * ((h1 - h0) + (s1 - s0)) / wall
    return out


# -- report ---------------------------------------------------------------------------------


def median_with_counts(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """`report.median_of`, with the header tallies summed over the repeats."""
    med = median_of([{k: v for k, v in r.items() if k != "header_counts"} for r in runs])
    med["header_counts"] = {}
    for r in runs:
        for k, n in r["header_counts"].items():
            med["header_counts"][k] = med["header_counts"].get(k, 0) + n
    return med


def _f(x: float, fmt: str) -> str:
    return "-" if x != x else format(x, fmt)  # x != x: NaN


def print_table(modes: list[bool], cases: list[Case], med: dict[tuple[str, str, int], dict[str, Any]],
                conc: int) -> None:
    head = ["mode", "path", "c=1 p50/p99 ms", "p50 x direct", "added p50 ms", f"c={conc} req/s",
            "req/s x direct", "gw CPU us/req", "core1 %", "x-gateway-cache", "fail"]
    rows = []
    for stream in modes:
        mode = "stream" if stream else "non-stream"
        d1, dn = med[("direct", mode, 1)], med[("direct", mode, conc)]
        for case in cases:
            m1, mn = med[(case.label, mode, 1)], med[(case.label, mode, conc)]
            direct = case.kind == "direct"
            seen = {k: m1["header_counts"].get(k, 0) + mn["header_counts"].get(k, 0)
                    for k in {*m1["header_counts"], *mn["header_counts"]}}
            rows.append([
                mode, case.label, f"{_f(m1['p50_ms'], '.3f')}/{_f(m1['p99_ms'], '.3f')}",
                "1.00" if direct else _f(m1["p50_ms"] / d1["p50_ms"], ".2f"),
                "-" if direct else _f(m1["p50_ms"] - d1["p50_ms"], "+.3f"),
                _f(mn["rps"], ",.0f"), "1.00" if direct else _f(mn["rps"] / dn["rps"], ".2f"),
                _f(mn.get("gw_cpu_us_per_req", float("nan")), ",.0f"), _f(mn.get("core1_pct", float("nan")), ".0f"),
                header_mix(case, seen),
                str(sum(m["non_2xx"] + m["errors"] for m in (m1, mn))),
            ])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt_row(r: list[str]) -> str:
        cells = enumerate(zip(r, widths, strict=True))
        return "  ".join(c.ljust(w) if i in (0, 1, 9) else c.rjust(w) for i, (c, w) in cells)

    print(fmt_row(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt_row(r))
    print(f"p50/p99 = full response time (stream: through data: [DONE]); gw CPU and core1 at c={conc}; "
          "x-gateway-cache = what the responses (both loads, warm-up included) said; (!) = not all what the "
          "path claims.")


def header_mix(case: Case, seen: dict[str, int]) -> str:
    """`hit x1,234` when every response said what the case claims; the shares and `(!)` otherwise."""
    name = {NO_HEADER: "(none)"}
    if set(seen) <= {case.expect}:
        return f"{name.get(case.expect, case.expect)} x{seen.get(case.expect, 0):,}"
    total = sum(seen.values())
    shares = sorted(seen.items(), key=lambda item: -item[1])
    return " ".join(f"{name.get(k, k)} {100 * n / total:.1f}%" for k, n in shares) + " (!)"


def check_targets(med: dict[tuple[str, str, int], dict[str, Any]]) -> bool:
    m = med.get((Case("hit", "redis").label, "non-stream", 1))
    if m is None:
        return True
    ok = True
    limits = (("p50", m["p50_ms"], TARGET_HIT_REDIS_P50_MS), ("p99", m["p99_ms"], TARGET_HIT_REDIS_P99_MS))
    for name, value, limit in limits:
        passed = value < limit
        ok &= passed
        print(f"[{'PASS' if passed else 'FAIL'}] gateway, hit (redis), non-stream c=1: {name} {value:.3f} ms "
              f"(target < {limit:g} ms)")
    return ok


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=4.0, help="measured seconds per load (default 4)")
    ap.add_argument("--warmup", type=float, default=1.0, help="uncounted warm-up seconds per load (default 1)")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrency of the req/s loads (default 16)")
    ap.add_argument("--modes", default="non-stream,stream", help="comma list of non-stream,stream")
    ap.add_argument("--chunks", type=int, default=20, help="SSE content chunks per streamed response (default 20)")
    ap.add_argument("--server", default="uvicorn", help="the gateway's HTTP server (uvicorn or granian)")
    ap.add_argument("--upstream-client", default="aiohttp", help="the gateway's upstream client (aiohttp or httpx)")
    ap.add_argument("--paths", default="bypass,miss,hit", help="comma list of bypass,miss,hit (direct always runs)")
    ap.add_argument("--no-redis", action="store_true", help="skip the Redis store cases")
    ap.add_argument("--repeat", type=int, default=1, help="repeat everything N times, report medians")
    ap.add_argument("--json", type=Path, default=None, help="write results to this JSON file")
    ap.add_argument("--gateway-arg", action="append", default=[], help="extra arg for 'serve' (repeatable)")
    ap.add_argument("--ready-timeout", type=float, default=30.0, help="seconds to wait for GET /ready")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    ap.add_argument("--fail-on-target", action="store_true", help="exit 3 if a target is missed")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temp dir with configs and logs")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [m.strip() for m in args.modes.split(",") if m.strip()]
    if bad := set(names) - {"non-stream", "stream"}:
        raise SystemExit(f"unknown --modes {sorted(bad)}")
    modes = [m == "stream" for m in names]
    paths = {p.strip() for p in args.paths.split(",") if p.strip()} | {"direct"}
    if bad := paths - {"direct", "bypass", "miss", "hit"}:
        raise SystemExit(f"unknown --paths {sorted(bad)}")
    cases = [c for c in CASES if c.kind in paths and not (args.no_redis and c.store == "redis" and c.kind != "direct")]
    allowed = sorted(os.sched_getaffinity(0))
    gw_cpu = harness_cpu = None
    if not args.no_pin:
        gw_cpu, harness_cpu = allowed[0], allowed[min(1, len(allowed) - 1)]
        os.sched_setaffinity(0, {harness_cpu})  # the load generator sits beside the upstream and Redis

    log_dir = Path(tempfile.mkdtemp(prefix="gw-cache-"))
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    upstream: Upstream | None = None
    redis: RedisServer | None = None
    try:
        upstream = Upstream(harness_cpu, args.chunks, 0.0, log_dir)
        harness_pids = [upstream.proc.pid]
        if not args.no_redis:
            redis = RedisServer(harness_cpu, log_dir)
            harness_pids.append(redis.proc.pid)
        log(f"fake upstream on :{upstream.port}{f', redis-server on :{redis.port}' if redis else ''} "
            f"(core {harness_cpu}), logs in {log_dir}")
        for rep in range(args.repeat):
            for case in cases:
                # A fresh gateway per case: nothing one case leaves behind (a full store, background
                # writes, a Redis breaker that tripped under load) colours the next one.
                gw: Gateway | None = None
                if case.kind != "direct":
                    redis_url = redis.url if redis is not None and case.store == "redis" else None
                    target = Target(args.server, args.upstream_client, "redis" if redis_url else "local")
                    gw = Gateway(target, upstream.port, gw_cpu, log_dir, args.gateway_arg, args.ready_timeout,
                                 redis_url=redis_url, name=f"gateway-{case.kind}-{case.store}-{rep + 1}")
                try:
                    port = gw.port if gw else upstream.port
                    for stream in modes:
                        check_case(case, port, stream)
                        mode = "stream" if stream else "non-stream"
                        for conc in (1, args.concurrency):
                            log(f"[{rep + 1}/{args.repeat}] {case.label:<22} {mode:<10} c={conc:<3} "
                                f"{args.warmup:g}s warm-up + {args.duration:g}s ...")
                            r = measure(case, stream, conc, port, args, harness_pids, gw.pids if gw else [])
                            fails = r["non_2xx"] + r["errors"]
                            log(f"    {r['rps']:>9,.0f} req/s  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms"
                                + (f"  FAILURES {fails}: {r['error_samples']}" if fails else ""))
                            runs.setdefault((case.label, mode, conc), []).append(r)
                            if gw is not None and gw.proc.poll() is not None:
                                raise BenchError(f"gateway exited ({gw.proc.returncode})\n{gw.logs()}")
                finally:
                    if gw is not None:
                        gw.close()
    except BenchError as e:
        log(f"\nERROR: {e}\n(logs kept in {log_dir})")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if upstream is not None:
            upstream.close()
        if redis is not None:
            redis.close()

    med = {key: median_with_counts(v) for key, v in runs.items()}
    pin = "unpinned" if args.no_pin else f"gateway core {gw_cpu}, upstream+redis+loadgen core {harness_cpu}"
    print(f"\nResponse cache  ({platform.node()}, {os.cpu_count()} cpus, Python {platform.python_version()}; {pin}; "
          f"{args.server}+{args.upstream_client}; {args.duration:g}s x {args.repeat} (median), "
          f"{args.chunks} chunks/stream)")
    print_table(modes, cases, med, args.concurrency)
    targets_ok = check_targets(med)
    failures = sum(m["non_2xx"] + m["errors"] for m in med.values())
    expect = {c.label: c.expect for c in cases}
    astray = [f"{p} {m} c={c}: {r['header_counts']}" for (p, m, c), rs in runs.items() for r in rs
              if set(r["header_counts"]) - {expect[p]}]
    for line in astray:
        print(f"[INVALID] x-gateway-cache not what the path claims in {line}")
    if args.json is not None:
        doc = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                        "gateway_cpu": gw_cpu, "harness_cpu": harness_cpu},
            "results": [{"path": p, "mode": m, "concurrency": c, "median": med[(p, m, c)], "runs": runs[(p, m, c)]}
                        for (p, m, c) in runs],
        }
        args.json.write_text(json.dumps(nan_to_none(doc), indent=2))
        log(f"wrote {args.json}")
    if not args.keep_logs and not failures and not astray:
        for p in log_dir.iterdir():
            p.unlink()
        log_dir.rmdir()
    else:
        log(f"logs kept in {log_dir}")
    if astray:
        log("ERROR: some responses did not take the path measured (see table); the numbers are not valid")
        return 2
    if failures:
        log(f"ERROR: {failures} failed requests (see table)")
        return 1
    return 3 if args.fail_on_target and not targets_ok else 0


if __name__ == "__main__":
    sys.exit(main())
