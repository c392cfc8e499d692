"""`gateway experiments report --plot`: one PNG of an experiment report (the dict of `build_report`).

matplotlib is an optional extra (`pip install 'llm-inference-gateway[plot]'`), imported only when a
plot is asked for, so the gateway itself never pays for it.
"""

from __future__ import annotations

from typing import Any

_LATENCY = ("e2e", "ttft", "tpot")
INSTALL_HINT = "plotting needs matplotlib: pip install 'llm-inference-gateway[plot]'"


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def plot_report(report: dict[str, Any], path: str) -> None:
    """Write a PNG to `path`: left, each arm's latency CDF of the experiment's metric (e2e
    when the metric is not a latency) on a log ms axis; right, each candidate's running difference
    from control over time, with its confidence-sequence interval shaded and a zero line.

    Raises `PlotUnavailable` when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: the CLI may run over ssh or in a container
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise PlotUnavailable(INSTALL_HINT) from err

    metric = str(report["metric"]) if report.get("metric") in _LATENCY else "e2e"
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    try:
        _distributions(left, report, metric)
        _history(right, report)
        state = "stopped" if report.get("stopped") else ("active" if report.get("active") else "inactive")
        fig.suptitle(f"experiment {report.get('name')} ({report.get('kind')}, route {report.get('route')}, {state})")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)


def _distributions(ax: Any, report: dict[str, Any], metric: str) -> None:
    """Each arm's CDF. Not histograms: each arm's buckets are merged to its own group width, so bar
    heights of two arms would not compare, while cumulative shares always do."""
    drawn = False
    for arm, data in (report.get("arms") or {}).items():
        # Values at the zero threshold cannot sit on a log axis; they are a tiny corner of any latency.
        points = [(v * 1000.0, c) for v, c in (data.get("distribution") or {}).get(metric, []) if v > 0]
        total = sum(c for _, c in points)
        if not total:
            continue
        xs, ys, seen = [], [], 0
        for value, count in points:
            seen += count
            xs.append(value)
            ys.append(seen / total)
        n = ((data.get("latency") or {}).get(metric) or {}).get("n", total)
        ax.step(xs, ys, where="post", label=f"{arm} (n={n})")
        drawn = True
    ax.set_xscale("log")
    ax.set_xlabel(f"{metric} latency (ms, log scale)")
    ax.set_ylabel("share of requests at or below")
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{metric} distribution per arm (CDF)")
    if drawn:
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no samples yet", ha="center", va="center", transform=ax.transAxes)


def _history(ax: Any, report: dict[str, Any]) -> None:
    """The running difference (candidate - control) per candidate; latencies in ms."""
    history = report.get("history") or []
    metric = history[-1].get("metric") if history else report.get("metric")
    scale, unit = (1000.0, " (ms)") if metric in _LATENCY else (1.0, "")
    start = history[0].get("at", 0.0) if history else 0.0
    series: dict[str, list[tuple[float, float, float | None, float | None]]] = {}
    for point in history:
        minutes = (point.get("at", start) - start) / 60.0
        for arm, est in (point.get("arms") or {}).items():
            diff = est.get("difference")
            if diff is None:
                continue
            low, high = est.get("low"), est.get("high")
            series.setdefault(arm, []).append((minutes, diff * scale, None if low is None else low * scale,
                                               None if high is None else high * scale))
    for arm, rows in series.items():
        xs = [r[0] for r in rows]
        (line,) = ax.plot(xs, [r[1] for r in rows], label=arm)
        # Only the looks with a bounded interval get a band; the first looks are unbounded.
        banded = [r for r in rows if r[2] is not None and r[3] is not None]
        if banded:
            ax.fill_between([r[0] for r in banded], [r[2] for r in banded], [r[3] for r in banded],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("minutes since the first look")
    ax.set_ylabel(f"{metric} difference vs {report.get('control')}{unit}")
    ax.set_title("running estimate (confidence sequence)")
    if series:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no history yet", ha="center", va="center", transform=ax.transAxes)
