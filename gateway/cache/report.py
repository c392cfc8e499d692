"""`gateway cache stats` as a terminal table, from the JSON a gateway serves at /admin/cache."""

from __future__ import annotations

from typing import Any

_RESULTS = ("hit", "miss", "coalesced", "bypass")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_cache_stats(stats: dict[str, Any]) -> str:
    """The store, then one row per route (hits, misses, coalesced, bypassed, hit ratio), then the writes."""
    lines = [f"store: {stats.get('store', '?')} ({'up' if stats.get('available') else 'UNREACHABLE'})"]
    if "entries" in stats:
        lines.append(f"entries: {stats['entries']} using {_size(stats.get('size_bytes', 0))} of "
                     f"{_size(stats.get('max_bytes', 0))} ({stats.get('evictions', 0)} evicted)")
    if "errors" in stats:
        lines.append(f"store errors: {stats['errors']} failed or over budget, "
                     f"{stats.get('skipped_while_down', 0)} calls skipped while unreachable")
    routes: dict[str, dict[str, int]] = stats.get("routes") or {}
    header = f"{'route':<28}" + "".join(f"{name:>11}" for name in _RESULTS) + f"{'hit ratio':>11}"
    lines += ["", header, "-" * len(header)]
    if not routes:
        lines.append("(no requests yet)")
    for route, counts in routes.items():
        looked_up = counts.get("hit", 0) + counts.get("miss", 0) + counts.get("coalesced", 0)
        ratio = f"{(counts.get('hit', 0) + counts.get('coalesced', 0)) / looked_up:.1%}" if looked_up else "-"
        lines.append(f"{route:<28}" + "".join(f"{counts.get(name, 0):>11}" for name in _RESULTS) + f"{ratio:>11}")
    not_stored = stats.get("not_stored") or {}
    reasons = ", ".join(f"{reason}: {n}" for reason, n in not_stored.items()) or "none"
    lines += [
        "",
        f"stored: {stats.get('stored', 0)} answers, {_size(stats.get('stored_bytes', 0))} written; "
        f"{_size(stats.get('served_bytes', 0))} read by hits",
        f"not stored: {reasons}; store refused: {stats.get('write_failures', 0)}; "
        f"unreadable entries: {stats.get('unreadable_entries', 0)}; "
        f"in flight now: {stats.get('flights_in_progress', 0)}",
    ]
    return "\n".join(lines)
