"""The live picture of every backend, for `GET /admin/backends` and `gateway backends`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from gateway.routing.cost import request_cost_usd

if TYPE_CHECKING:
    from gateway.state import GatewayState


def backends_report(state: GatewayState) -> dict[str, Any]:
    """JSON-ready: the routing state's kind and, per backend, health, breaker, stats, load and cost."""
    stats_store, breakers = state.routing.stats, state.routing.breakers
    backends: list[dict[str, Any]] = []
    pairs = state.speculative.by_backend()
    for name, backend in state.backends.items():
        stats = stats_store.get(name)
        config = backend.config
        backends.append({
            "name": name,
            "plugin": backend.plugin,
            "model": config.model,
            "url": config.url,
            "healthy": state.health.is_healthy(name),
            "health_reason": state.health.reasons.get(name),
            "breaker": msgspec.to_builtins(breakers.snapshot(name)),
            "stats": msgspec.to_builtins(stats),
            "max_concurrency": config.max_concurrency,
            "cost": {
                **msgspec.to_builtins(config.cost),
                # What a million output tokens cost now (a GPU-hour price over measured throughput).
                "effective_output_per_mtok": request_cost_usd(config, stats, 0, 1_000_000),
            },
            # Speculative pairs this backend is part of, with the probe's verdict (why a pair runs plain).
            "speculative": pairs.get(name, []),
        })
    return {
        "routing_state": state.routing.describe(),
        "shared": state.routing.shared,
        "shared_ok": state.routing.shared_ok,
        "backends": backends,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a terminal table: one line per backend."""
    header = ("backend", "plugin", "health", "breaker", "in-flight", "queued", "ttft ms", "tpot ms",
              "e2e ms", "err %", "samples", "$/Mtok out")
    rows: list[tuple[str, ...]] = [header]
    for b in report["backends"]:
        stats, breaker = b["stats"], b["breaker"]
        rows.append((
            b["name"], b["plugin"],
            "up" if b["healthy"] else f"DOWN ({b['health_reason']})",
            breaker["state"] + (f" ({breaker['failures']} fail)" if breaker["failures"] else ""),
            str(stats["in_flight"]),
            "-" if stats["queued"] is None else f"{stats['queued']:g}",
            _ms(stats["ttft_s"]), _ms(stats["tpot_s"]), _ms(stats["e2e_s"]),
            f"{stats['error_rate'] * 100:.1f}", f"{stats['samples']:.1f}",
            f"{b['cost']['effective_output_per_mtok']:.4g}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"routing state: {report['routing_state']}"
             + ("" if report["shared_ok"] else " (UNREACHABLE: local state only)")]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)
