"""`gateway experiments report` as terminal tables, from the dict `build_report` returns (or its JSON).

Reads the report defensively (`.get` everywhere): the CLI may talk to a gateway of another version.
Latencies are shown in ms; a missing number (None) is shown as "-".
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

_LATENCY = ("e2e", "ttft", "tpot")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000.0
    return f"{ms:,.0f}" if abs(ms) >= 1000 else f"{ms:.1f}" if abs(ms) >= 10 else f"{ms:.2f}"


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x * 100:.{digits}f}%"


def _signed_pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f}%"


def _usd(x: float | None) -> str:
    return "-" if x is None else f"${x:.3g}"


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(headers: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Rows under a header and a rule; the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) if rows else len(headers[i])
              for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def _header(report: dict[str, Any]) -> list[str]:
    stopped = report.get("stopped")
    if stopped:
        state = f"STOPPED at {_when(stopped.get('at'))}: {stopped.get('reason')}; serving {stopped.get('serve')}"
    else:
        state = "active" if report.get("active") else "inactive (outside its start/stop window)"
    srm = report.get("srm")
    if srm is None:
        srm_line = "SRM: not checked (shadow experiments have no designed split)"
    elif srm.get("alarm"):
        srm_line = f"SRM: ALARM, the split does not match the design: {srm.get('message')}"
    else:
        srm_line = f"SRM: ok ({srm.get('message')})"
    return [
        f"experiment {report.get('name')} ({report.get('kind')}) on route {report.get('route')}",
        f"state: {state}",
        f"metric: {report.get('metric')}, alpha {report.get('alpha')}, target n {report.get('target_n')} per arm; "
        f"control: {report.get('control')}; generated {_when(report.get('generated_at'))}",
        srm_line,
    ]


def _arm_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    shadow = report.get("kind") == "shadow"
    headers = ["arm", "target", "share exp/obs", "requests", "errors", "e2e mean ms [CI]", "e2e p50",
               "e2e p99", "ttft p50", "tpot mean", "tokens out", "cost/req", "score"]
    if shadow:
        headers += ["exact", "similarity"]
    rows = []
    for arm, a in (report.get("arms") or {}).items():
        latency = a.get("latency") or {}
        e2e, ttft, tpot = (latency.get(m) or {} for m in _LATENCY)
        low, high = e2e.get("mean_ci") or [None, None]
        mean = _ms(e2e.get("mean"))
        mean_ci = f"{mean} [{_ms(low)}, {_ms(high)}]" if e2e.get("mean") is not None else "-"
        feedback = a.get("feedback") or {}
        score = _num(feedback.get("score_mean"))
        if feedback.get("scored"):
            score += f" (n={feedback['scored']})"
        row = [
            arm, str(a.get("target") or "-"),
            f"{_pct(a.get('expected_share'))}/{_pct(a.get('observed_share'))}",
            f"{a.get('requests', 0):,}",
            f"{a.get('errors', 0):,} ({_pct(a.get('error_rate'))})",
            mean_ci, _ms(e2e.get("p50")), _ms(e2e.get("p99")), _ms(ttft.get("p50")), _ms(tpot.get("mean")),
            f"{a.get('output_tokens', 0):,}", _usd(a.get("cost_per_request")), score,
        ]
        if shadow:
            agreement = a.get("agreement")
            row += ([_pct(agreement.get("exact_rate")), _num(agreement.get("similarity_mean"), ".3f")]
                    if agreement else ["-", "-"])
        rows.append(row)
    return headers, rows


def _difference(metric: str, x: float | None) -> str:
    """A difference in the metric's own unit: ms, percentage points, dollars, score points."""
    if x is None:
        return "-"
    if metric in _LATENCY:
        return f"{x * 1000:+.1f} ms"
    if metric == "error_rate":
        return f"{x * 100:+.2f} pp"
    if metric == "cost":
        return f"{'-' if x < 0 else '+'}${abs(x):.3g}"
    return f"{x:+.3g}"


def _comparison_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["candidate", "metric", "n cand/ctrl", "difference", "relative", "interval (relative)", "p-value",
               "result"]
    primary = report.get("metric")
    rows = []
    for cand, metrics in (report.get("comparisons") or {}).items():
        for metric, c in metrics.items():
            low, high = c.get("relative_interval") or [None, None]
            abs_low, abs_high = c.get("interval") or [None, None]
            if low is not None and high is not None:
                interval = f"{_signed_pct(low)} .. {_signed_pct(high)}"
            elif abs_low is not None and abs_high is not None:
                # Control's mean is 0, so there is no relative interval: show the absolute one.
                interval = f"{_difference(metric, abs_low)} .. {_difference(metric, abs_high)}"
            else:
                interval = "unbounded"
            if c.get("conclusive"):
                result = f"conclusive: {c.get('winner')} wins"
            else:
                result = "not conclusive"
            rows.append([
                cand, metric + (" *" if metric == primary else ""),
                f"{c.get('n_candidate', '?')}/{c.get('n_control', '?')}",
                _difference(metric, c.get("difference")), _signed_pct(c.get("relative")), interval,
                _num(c.get("p_value"), ".2g"), result,
            ])
    return headers, rows


def format_report(report: dict[str, Any]) -> str:
    """The report as text: header lines, a table of arms, a table of comparisons, then the verdict."""
    lines = _header(report)
    headers, rows = _arm_rows(report)
    lines += ["", "arms (latencies in ms, successful requests only):", *_table(headers, rows, left=2)]
    headers, rows = _comparison_rows(report)
    confidence = report.get("confidence") or (1.0 - float(report.get("alpha") or 0.05))
    lines += ["", f"comparisons with {report.get('control')} ({confidence:.0%} confidence sequences, "
              f"valid at every look; * = the experiment's metric):"]
    lines += _table(headers, rows, left=2) if rows else ["(no candidate arm)"]
    lines += ["", f"verdict: {report.get('verdict', '-')}"]
    return "\n".join(lines)
