"""The overhead benchmark's scenarios, medians, table and target checks."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

# Targets the gateway must meet (see the project brief).
TARGET_ADDED_P50_MS_C1 = 1.0
TARGET_RPS_C64 = 1000.0



@dataclass(frozen=True)
class Scenario:
    concurrency: int
    stream: bool

    @property
    def label(self) -> str:
        return f"c={self.concurrency} {'stream' if self.stream else 'non-stream'}"


@dataclass(frozen=True)
class Target:
    """Where the load goes: straight to the upstream, or a gateway config."""

    server: str | None = None  # None = direct
    client: str | None = None
    state: str = "local"  # where routing state lives: in process, or shared through Redis

    @property
    def label(self) -> str:
        if self.server is None:
            return "direct"
        return f"{self.server}+{self.client}" + ("+redis" if self.state == "redis" else "")


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numeric metrics over repeats; failures are summed."""
    med: dict[str, Any] = {}
    for key in runs[0]:
        vals = [r[key] for r in runs if key in r]
        if key in ("non_2xx", "errors"):
            med[key] = sum(vals)
        elif key == "error_samples":
            med[key] = sorted({s for v in vals for s in v})[:5]
        elif key == "status_counts":
            counts: dict[str, int] = {}
            for v in vals:
                for k, n in v.items():
                    counts[k] = counts.get(k, 0) + n
            med[key] = counts
        else:
            med[key] = statistics.median(vals)
    return med


def _f(x: float, fmt: str) -> str:
    return "-" if x != x else format(x, fmt)  # x != x: NaN


def print_table(scenarios: list[Scenario], targets: list[Target], med: dict[tuple[str, str], dict[str, Any]]) -> None:
    head = [
        "scenario",
        "gateway",
        "direct req/s",
        "gw req/s",
        "ratio",
        "direct p50/p99 ms",
        "gw p50/p99 ms",
        "added p50 ms",
        "gw CPU us/req",
        "gw CPU %",
        "core1 %",
        "fail direct/gw",
    ]
    rows: list[list[str]] = []
    gw_targets = [t for t in targets if t.server is not None]
    for sc in scenarios:
        d = med[("direct", sc.label)]
        d_fail = d["non_2xx"] + d["errors"]
        for t in gw_targets or [None]:
            g = med.get((t.label, sc.label)) if t is not None else None
            row = [sc.label, t.label if t is not None else "-", _f(d["rps"], ",.0f")]
            if g is None:
                row += ["-", "-", f"{_f(d['p50_ms'], '.3f')}/{_f(d['p99_ms'], '.3f')}"] + ["-"] * 5 + [f"{d_fail}/-"]
            else:
                g_fail = g["non_2xx"] + g["errors"]
                row += [
                    _f(g["rps"], ",.0f"),
                    _f(g["rps"] / d["rps"] if d["rps"] else float("nan"), ".2f"),
                    f"{_f(d['p50_ms'], '.3f')}/{_f(d['p99_ms'], '.3f')}",
                    f"{_f(g['p50_ms'], '.3f')}/{_f(g['p99_ms'], '.3f')}",
                    _f(g["p50_ms"] - d["p50_ms"], "+.3f"),
                    _f(g.get("gw_cpu_us_per_req", float("nan")), ",.0f"),
                    _f(g.get("gw_cpu_pct", float("nan")), ".0f"),
                    _f(g.get("core1_pct", float("nan")), ".0f"),
                    f"{d_fail}/{g_fail}",
                ]
            rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    # Text columns left-aligned, numbers right-aligned.
    fmt_row = lambda r: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
    )
    print(fmt_row(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt_row(r))
    print("stream rows: p50/p99 = time to first body byte (first SSE event); full times are in --json output.")


def check_targets(scenarios: list[Scenario], targets: list[Target], med: dict[tuple[str, str], dict[str, Any]]) -> bool:
    """Print PASS/FAIL for the brief's targets; True if all that apply pass."""
    ok = True
    labels = {s.label for s in scenarios}
    for t in targets:
        if t.server is None:
            continue
        c1 = Scenario(1, False).label
        if c1 in labels:
            added = med[(t.label, c1)]["p50_ms"] - med[("direct", c1)]["p50_ms"]
            passed = added < TARGET_ADDED_P50_MS_C1
            ok &= passed
            print(
                f"[{'PASS' if passed else 'FAIL'}] {t.label}: added p50 at {c1} = {added:.3f} ms "
                f"(target < {TARGET_ADDED_P50_MS_C1:g} ms)"
            )
        c64 = Scenario(64, False).label
        if c64 in labels:
            rps = med[(t.label, c64)]["rps"]
            passed = rps >= TARGET_RPS_C64
            ok &= passed
            print(
                f"[{'PASS' if passed else 'FAIL'}] {t.label}: {rps:,.0f} req/s at {c64} "
                f"(target >= {TARGET_RPS_C64:,.0f})"
            )
    return ok



def nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [nan_to_none(v) for v in x]
    return x
